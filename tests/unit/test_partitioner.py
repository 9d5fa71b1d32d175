"""The producer's partitioner must put keys where any Kafka client would."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as kafkas_murmur2

from service.adapters.kafka.batches import CachedPartitioner, murmur2


def test_the_cached_partitioner_agrees_with_kafkas_default() -> None:
    cached, default = CachedPartitioner(size=3), DefaultPartitioner()
    partitions = list(range(6))
    keys = [f"org_{n}".encode() for n in range(10)] * 2
    assert [cached(k, partitions, partitions) for k in keys] == [
        default(k, partitions, partitions) for k in keys
    ]
    # A topic with another partition count gets its own answer for the same key.
    assert cached(b"org_1", [0, 1], [0, 1]) == default(b"org_1", [0, 1], [0, 1])


def test_murmur2_agrees_with_aiokafkas_for_every_length_and_byte() -> None:
    rng = random.Random(7)
    keys = [rng.randbytes(length) for length in range(70) for _ in range(30)]
    keys += [bytes([b]) * 5 for b in range(256)] + [b"grp_01JDZ8R5W7X3M9KQ2V6T4B1N0C"]
    assert [murmur2(k) for k in keys] == [kafkas_murmur2(k) for k in keys]
