"""`customer-groups bench`: the service's throughput, latency, relay rate, memory and
membership figures, next to what raw PostgreSQL and Kafka do on the same machine in the same
run (arguments parsed in service/entrypoints/bench.py)."""
