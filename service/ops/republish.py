"""Re-publishing stored events from the outbox, unchanged: same key, headers and `ce_id`,
so consumers that deduplicate by `ce_id` are unaffected."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from service.adapters.kafka.events import EventPublisher
from service.adapters.postgres import outbox_store
from service.adapters.postgres.db import Pool
from service.adapters.postgres.outbox_store import OutboxRow
from service.config import Settings
from service.ops.common import (
    QUIET,
    OpsError,
    Progress,
    chunks,
    database,
    iso,
    partitions_of,
    producer,
    target_topic,
)

EVENT_TYPES = (
    "group.created",
    "group.updated",
    "group.deleted",
    "group.customers_added",
    "group.customers_removed",
)


def event_type(text: str) -> str:
    """`created` or `group.created`."""
    name = text if text.startswith("group.") else f"group.{text}"
    if name not in EVENT_TYPES:
        raise ValueError(
            f"{text!r} is not one of {', '.join(t.removeprefix('group.') for t in EVENT_TYPES)}"
        )
    return name


@dataclass(frozen=True, slots=True)
class EventFilter:
    organizations: Sequence[str] = ()
    groups: Sequence[str] = ()
    types: Sequence[str] = ()
    since: datetime | None = None
    until: datetime | None = None

    @property
    def matches_everything(self) -> bool:
        return not (self.organizations or self.groups or self.types or self.since or self.until)

    def arguments(self) -> tuple[Any, ...]:
        return (
            list(self.organizations) or None,
            list(self.groups) or None,
            list(self.types) or None,
            self.since,
            self.until,
        )


@dataclass(frozen=True, slots=True)
class RepublishOutcome:
    topic: str
    by_type: dict[str, int]
    first: datetime | None
    last: datetime | None
    published: int
    dry_run: bool

    @property
    def matched(self) -> int:
        return sum(self.by_type.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "dry_run": self.dry_run,
            "matched": self.matched,
            "published": self.published,
            "by_type": self.by_type,
            "first": iso(self.first),
            "last": iso(self.last),
        }


_ARGUMENTS_AGE = timedelta(minutes=1)


async def refuse_beyond_outbox_retention(
    pool: Pool, settings: Settings, since: datetime | None
) -> None:
    """Published events older than the outbox retention are pruned: refuse to pretend."""
    days = settings.outbox_retention_days
    cutoff = datetime.now(UTC) - timedelta(days=days)
    # `--since 7d` was read a moment before this check and must pass it; an event at the
    # very edge may be gone, which only leaves it out.
    if since is None or since >= cutoff - _ARGUMENTS_AGE:
        return
    oldest: datetime | None = await pool.fetchval(outbox_store.OLDEST_EVENT)
    stored = f"the oldest stored event is from {iso(oldest)}" if oldest else "the outbox is empty"
    raise OpsError(
        f"refusing: --since {iso(since)} is older than the outbox retention ({days:g} days), "
        f"so events from before {iso(cutoff)} may have been pruned; {stored}. "
        f"Use --since {iso(cutoff)} or later."
    )


async def republish(
    settings: Settings,
    selection: EventFilter,
    *,
    to_topic: str | None = None,
    dry_run: bool = False,
    progress: Progress = QUIET,
    batch_size: int = 1000,
) -> RepublishOutcome:
    """Publish the matching outbox rows (published or not) again, in their original order."""
    if selection.since and selection.until and selection.until <= selection.since:
        raise OpsError("--until must be later than --since")
    topic = target_topic(settings, to_topic, settings.topic_events)
    await partitions_of(settings, topic)
    arguments = selection.arguments()
    async with database(settings) as pool:
        await refuse_beyond_outbox_retention(pool, settings, selection.since)
        # One snapshot, so the count the progress bar shows is the rows that follow.
        async with (
            pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            counts = await conn.fetch(outbox_store.COUNT_MATCHING, *arguments)
            by_type = {row["event_type"]: row["events"] for row in counts}
            first = min((row["first"] for row in counts), default=None)
            last = max((row["last"] for row in counts), default=None)
            published = 0
            if not dry_run and counts:
                async with producer(settings) as kafka:
                    publisher = EventPublisher(kafka, settings, topic=topic)
                    with progress.task("re-publishing events", sum(by_type.values())) as step:
                        rows = conn.cursor(
                            outbox_store.SELECT_MATCHING, *arguments, prefetch=batch_size
                        )
                        async for batch in chunks(rows, batch_size):
                            await publisher.publish([OutboxRow.from_record(r) for r in batch])
                            published += len(batch)
                            step(len(batch))
    return RepublishOutcome(topic, by_type, first, last, published, dry_run)
