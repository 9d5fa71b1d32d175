"""Rebuilding the compacted state topic from PostgreSQL: every live group's current JSON,
and a tombstone for each recently deleted one.

The service's relay writes the same topic while this runs. A snapshot value published
here could land after the relay's newer one for a group changed meanwhile; so after the
snapshot, groups changed since it started are published again until none differ."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from asyncpg.pool import PoolConnectionProxy

from service.adapters.kafka.batches import JSON_CONTENT
from service.adapters.postgres.command_store import GROUP_COLUMNS, group_from_row
from service.adapters.postgres.db import Pool
from service.config import Settings
from service.domain.model import Group, group_json
from service.ops.common import (
    QUIET,
    Progress,
    chunks,
    database,
    iso,
    partitions_of,
    producer,
    target_topic,
)

_SELECTION = """
FROM customer_groups
WHERE ($1::text[] IS NULL OR organization_id = ANY($1))
  AND (deleted_at IS NULL OR $2::timestamptz IS NULL OR deleted_at >= $2)
"""

SELECT_STATE = f"SELECT {GROUP_COLUMNS} {_SELECTION}"

COUNT_STATE = f"""
SELECT count(*) FILTER (WHERE deleted_at IS NULL) AS live,
       count(*) FILTER (WHERE deleted_at IS NOT NULL) AS deleted
{_SELECTION}
"""

SELECT_CHANGED_SINCE = f"""
SELECT {GROUP_COLUMNS} FROM customer_groups
WHERE updated_at >= $2 AND ($1::text[] IS NULL OR organization_id = ANY($1))
"""

# How far updated_at (the service's clock, read before its commit) may trail the
# database's clock at the moment this tool's snapshot starts.
CLOCK_MARGIN = timedelta(minutes=5)
CATCH_UP_ROUNDS = 5


@dataclass(frozen=True, slots=True)
class RebuildOutcome:
    topic: str
    live: int
    tombstones: int
    published: int
    caught_up: int
    tombstones_since: datetime | None
    dry_run: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "dry_run": self.dry_run,
            "live": self.live,
            "tombstones": self.tombstones,
            "tombstones_since": iso(self.tombstones_since),
            "published": self.published,
            "caught_up": self.caught_up,
        }


async def _publish(kafka: AIOKafkaProducer, topic: str, groups: Sequence[Group]) -> None:
    pending = [
        await kafka.send(
            topic,
            orjson.dumps(group_json(group)) if group.is_live else None,
            key=group.id.encode(),
            # The version, as the relay's state records carry it: a reader keeps the highest.
            headers=[JSON_CONTENT, ("ce_groupversion", str(group.version).encode())],
        )
        for group in groups
    ]
    await asyncio.gather(*pending)


async def rebuild_state(
    settings: Settings,
    *,
    organizations: Sequence[str] = (),
    to_topic: str | None = None,
    all_tombstones: bool = False,
    dry_run: bool = False,
    progress: Progress = QUIET,
    batch_size: int = 1000,
) -> RebuildOutcome:
    topic = target_topic(settings, to_topic, settings.topic_state)
    await partitions_of(settings, topic)
    orgs = list(organizations) or None
    since = None
    if not all_tombstones:
        since = datetime.now(UTC) - timedelta(days=settings.outbox_retention_days)
    async with database(settings) as pool:
        if dry_run:
            async with pool.acquire() as conn:
                live, deleted = await _count(conn, orgs, since)
            return RebuildOutcome(topic, live, deleted, 0, 0, since, dry_run)
        horizon: datetime = await pool.fetchval("SELECT now()") - CLOCK_MARGIN
        recent: dict[str, int] = {}
        published = 0
        async with producer(settings) as kafka:
            # One snapshot, so the count the progress bar shows is the rows that follow.
            async with (
                pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                live, deleted = await _count(conn, orgs, since)
                with progress.task("publishing state", live + deleted) as step:
                    rows = conn.cursor(SELECT_STATE, orgs, since, prefetch=batch_size)
                    async for batch in chunks(rows, batch_size):
                        groups = [group_from_row(row) for row in batch]
                        recent.update((g.id, g.version) for g in groups if g.updated_at >= horizon)
                        await _publish(kafka, topic, groups)
                        published += len(groups)
                        step(len(groups))
            caught_up = await _catch_up(
                pool, kafka, topic, orgs=orgs, horizon=horizon, recent=recent
            )
    return RebuildOutcome(topic, live, deleted, published, caught_up, since, dry_run)


async def _count(
    conn: PoolConnectionProxy[asyncpg.Record], orgs: list[str] | None, since: datetime | None
) -> tuple[int, int]:
    counts = await conn.fetchrow(COUNT_STATE, orgs, since)
    assert counts is not None
    return int(counts["live"]), int(counts["deleted"])


async def _catch_up(
    pool: Pool,
    kafka: AIOKafkaProducer,
    topic: str,
    *,
    orgs: list[str] | None,
    horizon: datetime,
    recent: dict[str, int],
) -> int:
    """Publish again the groups whose version differs from the one published last."""
    published = 0
    for _ in range(CATCH_UP_ROUNDS):
        changed = [
            group
            for row in await pool.fetch(SELECT_CHANGED_SINCE, orgs, horizon)
            if recent.get((group := group_from_row(row)).id) != group.version
        ]
        if not changed:
            break
        await _publish(kafka, topic, changed)
        recent.update((group.id, group.version) for group in changed)
        published += len(changed)
    return published
