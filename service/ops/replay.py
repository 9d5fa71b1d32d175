"""Re-consuming the command topic from a time, an offset or its beginning.

Two ways. `oneoff` reads the range with a consumer of its own and applies it through the
service's own path, alongside a running service, counting what happened; it stops at the
service's committed offsets, leaving what the service has not consumed yet to it. `reset` moves
the service's consumer-group offsets back so the service re-consumes the range itself;
Kafka accepts that only while the group has no members, so the service must be stopped.

Either way the processed-commands table makes a replay harmless: a command applied before
gets its stored result again, with no change and no new event. That holds only while the
command's record is kept (`processed_commands_retention_days`), so ranges reaching further
back are refused unless the operator insists."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from service.adapters.kafka import Record
from service.adapters.kafka.clients import client_options
from service.adapters.kafka.results import CommandPublisher, DeadLetter, Reply
from service.adapters.postgres.command_store import SELECT_PROCESSED, CommandStore
from service.adapters.postgres.db import Pool
from service.applier import CommandConsumer
from service.config import Settings
from service.observability import Metrics
from service.ops.common import (
    QUIET,
    OpsError,
    Progress,
    Span,
    database,
    iso,
    millis,
    partitions_of,
    producer,
    read_span,
    reader,
    span_since,
)
from service.parsing import Invalid, parse_command


@dataclass(frozen=True, slots=True)
class Start:
    """Where a replay begins: at a time, at explicit partition offsets, or at the beginning."""

    since: datetime | None = None
    offsets: Mapping[int, int] = field(default_factory=dict)


async def plan(consumer: AIOKafkaConsumer, settings: Settings, start: Start) -> Span:
    tps = await partitions_of(settings, settings.topic_commands)
    if not start.offsets:
        return await span_since(consumer, tps, start.since)
    known = {tp.partition: tp for tp in tps}
    if unknown := sorted(set(start.offsets) - set(known)):
        raise OpsError(
            f"{settings.topic_commands} has no partition {', '.join(map(str, unknown))}"
            f" (it has 0-{len(tps) - 1})"
        )
    chosen = [known[p] for p in sorted(start.offsets)]
    first = await consumer.beginning_offsets(chosen)
    end = await consumer.end_offsets(chosen)
    begin = {tp: min(max(start.offsets[tp.partition], first[tp]), end[tp]) for tp in chosen}
    return Span(begin, end)


async def committed_offsets(
    admin: AIOKafkaAdminClient, group: str, tps: Sequence[TopicPartition]
) -> dict[TopicPartition, int | None]:
    found = await admin.list_consumer_group_offsets(group, partitions=list(tps))
    offsets: dict[TopicPartition, int | None] = {}
    for tp in tps:
        at = found.get(tp)
        offsets[tp] = None if at is None or at.offset < 0 else at.offset
    return offsets


async def consumed_part(settings: Settings, span: Span) -> Span:
    """The part of `span` the service has consumed. Beyond its committed offsets, a replay
    beside the running service would apply a command before the commands ahead of it in
    its partition (one organization's order), which the service is still to apply."""
    admin = AIOKafkaAdminClient(**client_options(settings), client_id=settings.kafka_client_id)
    await admin.start()
    try:
        committed = await committed_offsets(admin, settings.kafka_consumer_group, list(span.start))
    finally:
        await admin.close()
    end = {}
    for tp, begin in span.start.items():
        at = committed[tp]
        end[tp] = begin if at is None else max(begin, min(span.end[tp], at))
    return Span(span.start, end)


async def refuse_beyond_processed_retention(
    consumer: AIOKafkaConsumer, settings: Settings, span: Span, now: datetime
) -> None:
    """Refuse commands older than the processed-command records: they could apply twice."""
    days = settings.processed_commands_retention_days
    cutoff = now - timedelta(days=days)
    found = await consumer.offsets_for_times({tp: millis(cutoff) for tp in span.start})
    older = 0
    for tp, begin in span.start.items():
        safe = span.end[tp] if found[tp] is None else found[tp].offset
        older += max(0, min(safe, span.end[tp]) - begin)
    if older:
        raise OpsError(
            f"refusing: {older} command(s) in this range are older than {iso(cutoff)}. "
            f"Processed-command records are kept {days:g} days, so such a command may have "
            f"been applied and forgotten, and would be applied a second time. Replay with "
            f"--since {iso(cutoff)} or later, or pass --beyond-retention if you know these "
            "commands were never applied (e.g. after restoring the database from a backup)."
        )


@dataclass(slots=True)
class Tally:
    records: int = 0
    reapplied: int = 0
    already_done: int = 0
    rejected: int = 0
    invalid: int = 0
    failed: int = 0
    pending: int = 0


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    topic: str
    span: Span
    tally: Tally
    dry_run: bool
    # Commands in the range the service has not consumed yet: it applies them itself.
    left_to_service: int = 0

    def to_json(self) -> dict[str, Any]:
        t = self.tally
        if self.dry_run:
            counts = {"already_done": t.already_done, "not_yet_applied": t.pending}
        else:
            counts = {
                "reapplied": t.reapplied,
                "already_done": t.already_done,
                "rejected": t.rejected,
                "failed": t.failed,
            }
        return {
            "mode": "oneoff",
            "topic": self.topic,
            "partitions": self.span.to_json(),
            "dry_run": self.dry_run,
            "records": t.records,
            **counts,
            "invalid": t.invalid,
            "left_to_service": self.left_to_service,
        }


class _TallyingPublisher(CommandPublisher):
    """Sends results as the service would, noting each command's outcome; `known` holds the
    commands of the current batch that had been applied before it."""

    def __init__(
        self,
        kafka: AIOKafkaProducer,
        settings: Settings,
        tally: Tally,
        known: set[tuple[str, str]],
    ) -> None:
        super().__init__(kafka, settings)
        self.tally = tally
        self.known = known

    async def send(self, replies: Sequence[Reply], dead: Sequence[DeadLetter] = ()) -> None:
        for reply in replies:
            result = reply.result
            if (result.organization_id, result.command_id) in self.known:
                self.tally.already_done += 1
            elif result.status == "accepted":
                self.tally.reapplied += 1
            else:
                self.tally.rejected += 1
        self.tally.failed += len(dead)
        await super().send(replies, dead)


async def _processed(pool: Pool, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    if not keys:
        return set()
    rows = await pool.fetch(SELECT_PROCESSED, [k[0] for k in keys], [k[1] for k in keys])
    return {(row["organization_id"], row["command_id"]) for row in rows}


def _applicable(
    records: list[Record], settings: Settings, tally: Tally
) -> tuple[list[Record], list[tuple[str, str]]]:
    """The records to apply and their (organization, command id) keys. Malformed ones are
    in the DLQ already and are not sent there again."""
    kept: list[Record] = []
    keys: list[tuple[str, str]] = []
    for record in records:
        parsed = parse_command(record.value, settings.command_max_bytes)
        if isinstance(parsed, Invalid):
            if parsed.malformed:
                tally.invalid += 1
                continue
            if parsed.command_id and parsed.organization_id:
                keys.append((parsed.organization_id, parsed.command_id))
        else:
            keys.append((parsed.organization_id, parsed.command_id))
        kept.append(record)
    return kept, keys


async def replay_oneoff(
    settings: Settings,
    start: Start,
    *,
    dry_run: bool = False,
    beyond_retention: bool = False,
    progress: Progress = QUIET,
) -> ReplayOutcome:
    """Apply the range again through the service's own consumer code, with its own reader."""
    tally = Tally()
    known: set[tuple[str, str]] = set()
    async with reader(settings) as consumer, database(settings) as pool:
        asked = await plan(consumer, settings, start)
        span = await consumed_part(settings, asked)
        if not beyond_retention:
            await refuse_beyond_processed_retention(consumer, settings, span, datetime.now(UTC))
        async with contextlib.AsyncExitStack() as stack:
            applier = None
            if not dry_run:
                kafka = await stack.enter_async_context(producer(settings))
                publisher = _TallyingPublisher(kafka, settings, tally, known)
                applier = CommandConsumer(
                    CommandStore(pool),
                    publisher,
                    Metrics(),
                    settings.command_max_bytes,
                    own_topics=frozenset(settings.topics),
                )
            with progress.task("replaying commands", span.total) as step:
                async for records in read_span(consumer, span, settings.command_batch_max):
                    tally.records += len(records)
                    wanted, keys = _applicable(records, settings, tally)
                    known.clear()
                    known.update(await _processed(pool, keys))
                    if applier is None:
                        tally.already_done += sum(1 for k in keys if k in known)
                        tally.pending += sum(1 for k in keys if k not in known)
                    elif wanted:
                        await applier.handle_records(wanted)
                    step(len(records))
    left = asked.total - span.total
    return ReplayOutcome(settings.topic_commands, span, tally, dry_run, left)
