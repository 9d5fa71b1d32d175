"""Kafka: clients, topics, and what the service publishes (results, dead letters, events)."""

from typing import TypeAlias

from aiokafka import ConsumerRecord

# aiokafka's ConsumerRecord is generic only to type checkers.
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
