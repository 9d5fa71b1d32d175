"""The outbox table as the relay, the pruner and the ops tools read it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg

from service.adapters.db import Connection, Pool

# A session lock: whoever holds it is the one relay that publishes; it is released when
# its connection ends, so a standby takes over as soon as the leader dies.
RELAY_LOCK = 0x6F75_7462_6F78

# In OutboxRow's field order. event_id comes as text: a UUID object only to print it
# again would cost the relay a microsecond an event.
OUTBOX_COLUMNS = (
    "id, event_id::text AS event_id, event_type, organization_id, group_id, group_version,"
    " command_id, traceparent, payload::text AS payload, occurred_at"
)

# Rows are claimed by `published_at IS NULL`, never by `id > last_seen`: identity values are
# handed out before commit, so a later id can become visible before an earlier one.
SELECT_UNPUBLISHED = f"""
SELECT {OUTBOX_COLUMNS} FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1
"""

MARK_PUBLISHED = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"

BACKLOG = """
SELECT count(*) AS rows, extract(epoch FROM now() - min(occurred_at)) AS oldest_age
FROM outbox WHERE published_at IS NULL
"""

# Retention counts from publication; the occurred_at bound (never later than published_at)
# only lets the scan use its index.
PRUNE_OUTBOX = """
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox
    WHERE occurred_at < now() - make_interval(secs => $1)
      AND published_at < now() - make_interval(secs => $1)
    LIMIT $2)
"""

PRUNE_PROCESSED = """
DELETE FROM processed_commands WHERE ctid IN (
    SELECT ctid FROM processed_commands
    WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2)
"""


# Ops (re-publish): rows matching optional filters, a NULL filter matching everything.
_MATCHING = """
FROM outbox
WHERE ($1::text[] IS NULL OR organization_id = ANY($1))
  AND ($2::text[] IS NULL OR group_id = ANY($2))
  AND ($3::text[] IS NULL OR event_type = ANY($3))
  AND ($4::timestamptz IS NULL OR occurred_at >= $4)
  AND ($5::timestamptz IS NULL OR occurred_at < $5)
"""

SELECT_MATCHING = f"SELECT {OUTBOX_COLUMNS} {_MATCHING} ORDER BY id"

COUNT_MATCHING = f"""
SELECT event_type, count(*) AS events, min(occurred_at) AS first, max(occurred_at) AS last
{_MATCHING} GROUP BY event_type ORDER BY event_type
"""

OLDEST_EVENT = "SELECT min(occurred_at) FROM outbox"


class OutboxRow(NamedTuple):
    """A tuple, made from a record in one step: a frozen dataclass's ten field assignments
    took the relay 2 us an event."""

    id: int
    event_id: str
    event_type: str
    organization_id: str
    group_id: str
    group_version: int
    command_id: str
    traceparent: str | None
    payload: str
    occurred_at: datetime

    @classmethod
    def from_record(cls, row: asyncpg.Record) -> OutboxRow:
        return cls._make(row)


# The leader's session settings; its connection is reset when it goes back to the pool.
LEADER_SETTINGS = """
SET synchronous_commit = off;
SET enable_bitmapscan = off;
SET enable_seqscan = off;
"""


async def try_lead(conn: Connection) -> bool:
    """Take the relay's lock if it is free, and set the leader's session up.

    Its marks need not wait for their WAL flush: a mark lost in a crash only means those
    rows are published again, with the same ids, which consumers must accept anyway. Its
    read is a walk of the unpublished index in id order; statistics taken before a burst
    (after a Kafka outage, say) make the planner collect and sort the whole backlog instead,
    which took 100 ms per batch with 200,000 rows waiting, against 1 ms for the walk."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK):
        return False
    await conn.execute(LEADER_SETTINGS)
    return True


async def unpublished(conn: Connection, limit: int) -> list[OutboxRow]:
    return [OutboxRow.from_record(r) for r in await conn.fetch(SELECT_UNPUBLISHED, limit)]


async def mark_published(conn: Connection, ids: Sequence[int]) -> None:
    await conn.execute(MARK_PUBLISHED, list(ids))


async def backlog(pool: Pool) -> tuple[int, float]:
    row = await pool.fetchrow(BACKLOG)
    assert row is not None
    return int(row["rows"]), float(row["oldest_age"] or 0.0)


async def prune(pool: Pool, statement: str, older_than_s: float, batch_size: int) -> int:
    """Delete in small batches, so no lock is held for long and autovacuum keeps up."""
    total = 0
    while True:
        status = await pool.execute(statement, older_than_s, batch_size)
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < batch_size:
            return total
