"""The dead-letter topic: what is in it, and sending chosen messages back to the commands.

A redrive sends the original key, value and headers (minus the `dlq_*` ones), so the
command goes through the service again exactly as its producer sent it. Its command_id
keeps that harmless: redriving a message twice applies it once."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer

from service.adapters.kafka import Record
from service.adapters.kafka.results import DLQ_PREFIX
from service.config import Settings
from service.ops.common import (
    QUIET,
    OpsError,
    Progress,
    headers_of,
    iso,
    partitions_of,
    producer,
    read_span,
    reader,
    record_time,
    span_since,
    text_of,
)
from service.parsing import Invalid, parse_command


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Dead letters by `dlq_reason` and by when they were dead-lettered (`until` excluded)."""

    reasons: Sequence[str] = ()
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.since and self.until and self.until <= self.since:
            raise OpsError("--until must be later than --since")

    def matches(self, record: Record) -> bool:
        if self.reasons and headers_of(record).get("dlq_reason") not in self.reasons:
            return False
        return self.until is None or record_time(record) < self.until


def describe(record: Record) -> dict[str, Any]:
    headers = headers_of(record)
    source = ":".join(
        headers.get(f"dlq_source_{part}", "?") for part in ("topic", "partition", "offset")
    )
    return {
        "partition": record.partition,
        "offset": record.offset,
        "time": iso(record_time(record)),
        "reason": headers.get("dlq_reason"),
        "error": headers.get("dlq_error"),
        "source": source,
        "key": text_of(record.key),
        "value": text_of(record.value, 300),
    }


@dataclass(slots=True)
class DeadLetterReport:
    topic: str
    matched: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    sample: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=5))
    sent: int = 0
    still_malformed: Counter[str] = field(default_factory=Counter)
    dry_run: bool = False

    def note(self, record: Record) -> None:
        self.matched += 1
        self.reasons[headers_of(record).get("dlq_reason") or "unknown"] += 1
        self.sample.append(describe(record))

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "matched": self.matched,
            "reasons": dict(self.reasons.most_common()),
            "sample": list(self.sample),
            "dry_run": self.dry_run,
            "sent": self.sent,
            "skipped_still_malformed": dict(self.still_malformed),
        }


async def _matching(
    consumer: AIOKafkaConsumer,
    settings: Settings,
    selection: DeadLetterFilter,
    progress: Progress,
    description: str,
) -> AsyncGenerator[list[Record]]:
    """The matching dead letters, as of now: messages arriving meanwhile are left alone."""
    tps = await partitions_of(settings, settings.topic_dlq)
    span = await span_since(consumer, tps, selection.since)
    with progress.task(description, span.total) as step:
        async for records in read_span(consumer, span):
            yield [r for r in records if selection.matches(r)]
            step(len(records))


async def list_dead_letters(
    settings: Settings,
    selection: DeadLetterFilter,
    *,
    sample: int = 5,
    progress: Progress = QUIET,
) -> DeadLetterReport:
    report = DeadLetterReport(settings.topic_dlq, sample=deque(maxlen=sample))
    async with reader(settings) as consumer:
        async for records in _matching(consumer, settings, selection, progress, "reading DLQ"):
            for record in records:
                report.note(record)
    return report


async def redrive(
    settings: Settings,
    selection: DeadLetterFilter,
    *,
    dry_run: bool = False,
    limit: int | None = None,
    sample: int = 5,
    progress: Progress = QUIET,
) -> DeadLetterReport:
    """Send matching dead letters back to the command topic, oldest first per partition.

    Messages the current code still finds malformed are skipped: they would only come
    straight back to the DLQ."""
    if limit is not None and limit < 1:
        raise OpsError("--limit must be at least 1")
    report = DeadLetterReport(settings.topic_dlq, sample=deque(maxlen=sample), dry_run=dry_run)
    async with (
        reader(settings) as consumer,
        producer(settings) as kafka,
        contextlib.aclosing(
            _matching(consumer, settings, selection, progress, "redriving")
        ) as dead,
    ):
        async for records in dead:
            pending = []
            for record in records:
                if limit is not None and report.matched >= limit:
                    break
                parsed = parse_command(record.value, settings.command_max_bytes)
                if isinstance(parsed, Invalid) and parsed.malformed:
                    report.still_malformed[parsed.reason] += 1
                    continue
                report.note(record)
                if dry_run:
                    continue
                headers = [(k, v) for k, v in record.headers if not k.startswith(DLQ_PREFIX)]
                pending.append(
                    await kafka.send(
                        settings.topic_commands, record.value, key=record.key, headers=headers
                    )
                )
            await asyncio.gather(*pending)
            report.sent += len(pending)
            if limit is not None and report.matched >= limit:
                break
    return report
