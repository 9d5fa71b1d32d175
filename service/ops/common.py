"""What the operations tools share: time arguments, progress, and reading Kafka ranges."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text

from service.adapters.kafka import Record
from service.adapters.kafka.clients import client_options, create_producer
from service.adapters.postgres.db import Pool, create_pool
from service.config import Settings

T = TypeVar("T")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class OpsError(Exception):
    """A refusal or failure the operator can act on; its message says how."""


def target_topic(settings: Settings, to_topic: str | None, default: str) -> str:
    """`to_topic`, or `default`; never another of the service's own topics, whose readers
    would take these records for what that topic carries (events read as commands)."""
    topic = to_topic or default
    if topic != default and topic in settings.topics:
        raise OpsError(
            f"refusing: {topic} is one of the service's own topics; --to-topic takes {default}"
            " or a topic of your own"
        )
    return topic


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """`2h`, `30m`, `7d`, `90s`, `1w` ago, or an ISO 8601 time; a time without a zone is UTC."""
    value = text.strip()
    if match := _DURATION.fullmatch(value):
        ago = timedelta(seconds=float(match[1]) * _SECONDS[match[2]])
        return (now or datetime.now(UTC)) - ago
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 2h, 7d) nor an ISO 8601 time (2026-11-20T10:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_partition_offset(text: str) -> tuple[int, int]:
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"{text!r} is not PARTITION:OFFSET, e.g. 3:1500")
    return int(partition), int(offset)


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_time(record: Record) -> datetime:
    return datetime.fromtimestamp(record.timestamp / 1000, UTC)


def millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def headers_of(record: Record) -> dict[str, str]:
    return {key: value.decode(errors="replace") for key, value in record.headers}


def text_of(value: bytes | None, limit: int | None = None) -> str | None:
    if value is None:
        return None
    text = value.decode(errors="replace")
    return text if limit is None or len(text) <= limit else text[:limit] + "…"


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")


class Advance(Protocol):
    def __call__(self, count: int = 1) -> None: ...


class Progress:
    """A progress bar with rate and ETA on stderr; silent when disabled (scripts, --json)."""

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Advance]:
        if not self.enabled:
            yield Step(None, None)
            return
        bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            _Rate(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        with bar:
            yield Step(bar, bar.add_task(description, total=total))


@dataclass(frozen=True, slots=True)
class Step:
    _bar: RichProgress | None
    _task: Any

    def __call__(self, count: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, count)


QUIET = Progress(enabled=False)


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[Pool]:
    pool = await create_pool(settings, min_size=1)
    try:
        yield pool
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """The service's producer (idempotent, acks=all), for tools that publish."""
    kafka = create_producer(settings)
    await kafka.start()
    try:
        yield kafka
    finally:
        await kafka.stop()


@contextlib.asynccontextmanager
async def reader(settings: Settings) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer outside any group: it commits nothing and moves no one's offsets."""
    kafka = AIOKafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await kafka.start()
    try:
        yield kafka
    finally:
        await kafka.stop()


async def partitions_of(settings: Settings, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(**client_options(settings), client_id=settings.kafka_client_id)
    await admin.start()
    try:
        # Listing first: asking for an unknown topic's metadata can create it.
        if topic not in await admin.list_topics():
            raise OpsError(f"topic {topic!r} does not exist")
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]


@dataclass(frozen=True, slots=True)
class Span:
    """Offsets `start` (inclusive) to `end` (exclusive) of some partitions of one topic."""

    start: Mapping[TopicPartition, int]
    end: Mapping[TopicPartition, int]

    @property
    def total(self) -> int:
        return sum(max(0, self.end[tp] - offset) for tp, offset in self.start.items())

    def to_json(self) -> list[dict[str, int]]:
        return [
            {"partition": tp.partition, "start": offset, "end": self.end[tp]}
            for tp, offset in sorted(self.start.items())
        ]


async def span_since(
    consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition], since: datetime | None
) -> Span:
    """From the first record at or after `since` (or the beginning) to the end as of now."""
    end = await consumer.end_offsets(list(tps))
    if since is None:
        return Span(await consumer.beginning_offsets(list(tps)), end)
    found = await consumer.offsets_for_times({tp: millis(since) for tp in tps})
    return Span({tp: end[tp] if at is None else at.offset for tp, at in found.items()}, end)


async def read_span(
    consumer: AIOKafkaConsumer, span: Span, batch_size: int = 500
) -> AsyncIterator[list[Record]]:
    """The records of `span`, in offset order per partition, a batch at a time.

    Done is judged by the consumer's position, not by the last record seen: transaction
    markers and compaction leave offsets that no record carries."""
    remaining = {tp: end for tp, end in span.end.items() if span.start[tp] < end}
    if not remaining:
        return
    consumer.assign(list(remaining))
    for tp in remaining:
        consumer.seek(tp, span.start[tp])
    while remaining:
        batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=batch_size)
        for tp, records in batches.items():
            wanted = [r for r in records if r.offset < remaining.get(tp, -1)]
            if wanted:
                yield wanted
        for tp in list(remaining):
            if await consumer.position(tp) >= remaining[tp]:
                del remaining[tp]
                consumer.pause(tp)


async def chunks(items: AsyncIterable[T], size: int) -> AsyncIterator[list[T]]:
    batch: list[T] = []
    async for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
