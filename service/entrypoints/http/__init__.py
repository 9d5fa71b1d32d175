"""The HTTP server: the customer-groups API, health, metrics and docs."""
