"""The producer's partitioner must put keys where any Kafka client would."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from service.adapters.kafka import CachedPartitioner


def test_the_cached_partitioner_agrees_with_kafkas_default() -> None:
    cached, default = CachedPartitioner(size=3), DefaultPartitioner()
    partitions = list(range(6))
    keys = [f"org_{n}".encode() for n in range(10)] * 2
    assert [cached(k, partitions, partitions) for k in keys] == [
        default(k, partitions, partitions) for k in keys
    ]
    # A topic with another partition count gets its own answer for the same key.
    assert cached(b"org_1", [0, 1], [0, 1]) == default(b"org_1", [0, 1], [0, 1])
