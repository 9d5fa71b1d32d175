"""Plain aiokafka clients for the bench: producing workloads and watching topics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.adapters.kafka import Record
from service.adapters.kafka.batches import send_batches
from service.adapters.kafka.clients import client_options
from service.config import Settings

OnRecord = Callable[[Record, float], None]


def producer(settings: Settings) -> Any:
    return AIOKafkaProducer(
        **client_options(settings),
        acks="all",
        linger_ms=5,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
    )


async def partitions(settings: Settings, topics: Sequence[str]) -> list[TopicPartition]:
    probe = producer(settings)
    await probe.start()
    try:
        return [TopicPartition(t, p) for t in topics for p in sorted(await probe.partitions_for(t))]
    finally:
        await probe.stop()


async def send(
    client: Any, topic: str, records: Sequence[tuple[bytes, bytes]]
) -> list[asyncio.Future[Any]]:
    """Hand them over as record batches, one per partition at a time: `send` per message
    costs far more CPU per message (docs/benchmark.md), CPU that the service under test
    shares. The futures are done once Kafka has acknowledged them."""
    return await send_batches(client, topic, [(key, value, []) for key, value in records])


async def produce(client: Any, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
    """`send` them and wait until Kafka has acknowledged them all."""
    await asyncio.gather(*await send(client, topic, records))


def _reader(settings: Settings, **options: Any) -> Any:
    """A consumer in no group: it reads the partitions it is assigned, from where it is told."""
    return AIOKafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        **options,
    )


class Tail:
    """Reads topics from their current end on, counting records as they arrive.

    `on_record(record, seen_at)` sees each record; seen_at is `time.perf_counter()` when
    the fetch that brought it returned."""

    def __init__(
        self, settings: Settings, topics: Sequence[str], on_record: OnRecord | None = None
    ):
        self._settings = settings
        self._topics = list(topics)
        self._on_record = on_record
        self.counts = dict.fromkeys(self._topics, 0)
        self.last_seen = dict.fromkeys(self._topics, 0.0)
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        assigned = await partitions(self._settings, self._topics)
        # The latency figure is the service's, not this reader's: while a fetch waits up to
        # fetch_max_wait_ms on quiet partitions, records of the others wait behind it.
        self._consumer = _reader(self._settings, fetch_max_wait_ms=10)
        await self._consumer.start()
        self._consumer.assign(assigned)
        for partition, offset in (await self._consumer.end_offsets(assigned)).items():
            self._consumer.seek(partition, offset)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100, max_records=10_000)
            seen_at = time.perf_counter()
            for partition, records in batches.items():
                self.counts[partition.topic] += len(records)
                self.last_seen[partition.topic] = seen_at
                if self._on_record is not None:
                    for record in records:
                        self._on_record(record, seen_at)
            if batches:
                self._arrived.set()

    async def wait(self, done: Callable[[], bool], stall_s: float) -> bool:
        """Until `done()`; False once nothing arrived for `stall_s` seconds."""
        last_progress = time.perf_counter()
        while not done():
            self._arrived.clear()
            try:
                async with asyncio.timeout(0.5):
                    await self._arrived.wait()
                last_progress = time.perf_counter()
            except TimeoutError:
                if self._task is not None and self._task.done():
                    self._task.result()
                if time.perf_counter() - last_progress > stall_s:
                    return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()


class Offsets:
    """What topics gained since `start()`: counted from their end offsets alone while a run
    is timed, so the bench takes none of the service's CPU to watch; read afterwards."""

    def __init__(self, settings: Settings, topics: Sequence[str]) -> None:
        self._settings = settings
        self._topics = list(topics)
        self._consumer: Any = None
        self._base: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        self._consumer = _reader(self._settings)
        await self._consumer.start()
        self._base = await self._consumer.end_offsets(
            await partitions(self._settings, self._topics)
        )

    async def gained(self) -> dict[str, int]:
        gained = dict.fromkeys(self._topics, 0)
        for partition, end in (await self._consumer.end_offsets(list(self._base))).items():
            gained[partition.topic] += end - self._base[partition]
        return gained

    async def read(self, on_record: Callable[[Record], None]) -> None:
        """Every record the topics gained, up to their ends now."""
        ends = await self._consumer.end_offsets(list(self._base))
        pending = {p for p, end in ends.items() if end > self._base[p]}
        self._consumer.assign(list(pending))
        for partition in pending:
            self._consumer.seek(partition, self._base[partition])
        last_progress = time.perf_counter()
        while pending:
            batches = await self._consumer.getmany(*pending, timeout_ms=1000, max_records=10_000)
            for partition, records in batches.items():
                last_progress = time.perf_counter()
                for record in records:
                    if record.offset < ends[partition]:
                        on_record(record)
            for partition in list(pending):
                if await self._consumer.position(partition) >= ends[partition]:
                    pending.discard(partition)
            if time.perf_counter() - last_progress > 30:
                raise RuntimeError(f"could not read {sorted(map(str, pending))} to their end")

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


@contextlib.asynccontextmanager
async def _admin(settings: Settings) -> AsyncIterator[Any]:
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def create_topic(settings: Settings, name: str, partitions: int) -> None:
    async with _admin(settings) as admin:
        await admin.create_topics([NewTopic(name, partitions, settings.topic_replication_factor)])


async def delete_topics(settings: Settings, names: Sequence[str]) -> None:
    async with _admin(settings) as admin:
        existing = set(await admin.list_topics())
        doomed = [name for name in names if name in existing]
        if doomed:
            await admin.delete_topics(doomed)


async def roundtrip_per_s(settings: Settings, topic: str, count: int, size: int) -> float:
    """Raw aiokafka: produce `count` messages of `size` bytes and consume them; messages/s."""
    tail = Tail(settings, [topic])
    await tail.start()
    client = producer(settings)
    await client.start()
    records = [(f"org-{i % 100}".encode(), (b"%08d" % i) * (size // 8)) for i in range(count)]
    try:
        started = time.perf_counter()
        await produce(client, topic, records)
        if not await tail.wait(lambda: tail.counts[topic] >= count, stall_s=30):
            raise RuntimeError(f"round trip: only {tail.counts[topic]} of {count} came back")
        return count / (tail.last_seen[topic] - started)
    finally:
        await client.stop()
        await tail.stop()
