"""The outbox table as the relay, the pruner and the ops tools read it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import NamedTuple

import asyncpg

from service.adapters.postgres import locks
from service.adapters.postgres.db import Connection, Pool

# In OutboxRow's field order. event_id comes as text: a UUID object only to print it
# again would cost the relay time on every event.
OUTBOX_COLUMNS = (
    "id, event_id::text AS event_id, event_type, organization_id, group_id, group_version,"
    " command_id, traceparent, payload::text AS payload, occurred_at"
)

# Rows are claimed by `published_at IS NULL`, never by `id > last_seen`: identity values are
# handed out before commit, so a later id can become visible before an earlier one.
SELECT_UNPUBLISHED = f"""
SELECT {OUTBOX_COLUMNS} FROM outbox WHERE published_at IS NULL AND parked_at IS NULL
ORDER BY id LIMIT $1
"""

MARK_PUBLISHED = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"

BACKLOG = """
SELECT count(*) FILTER (WHERE parked_at IS NULL) AS rows,
       extract(epoch FROM now() - min(occurred_at) FILTER (WHERE parked_at IS NULL))
           AS oldest_age,
       count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked
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

# An external publisher (Debezium) reads the outbox from the WAL and never marks a row
# published, so retention counts from when the event occurred: `republish` still finds every
# event of the retention window. A row our relay parked and nobody released stays.
PRUNE_OUTBOX_BY_AGE = """
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox
    WHERE occurred_at < now() - make_interval(secs => $1)
      AND (parked_at IS NULL OR published_at IS NOT NULL)
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
    cost the relay time on every event."""

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

# A session lock: whoever holds it is the one relay that publishes; it is released when
# its connection ends, so a standby takes over as soon as the leader's session is gone.
RELAY_LOCK = (locks.RELAY, 1)
TRY_LOCK = "SELECT pg_try_advisory_lock($1, $2)"
UNLOCK = "SELECT pg_advisory_unlock($1, $2)"

# A new term; `released` says whether the last leader handed over cleanly.
BEGIN_TERM = """
UPDATE relay_leader AS l SET epoch = l.epoch + 1, released = false, changed_at = now()
FROM (SELECT released FROM relay_leader WHERE id = 1) AS before
WHERE l.id = 1
RETURNING l.epoch, before.released
"""

END_TERM = """
UPDATE relay_leader SET released = true, changed_at = now() WHERE id = 1 AND epoch = $1
"""

PARKED_GROUPS = """
SELECT DISTINCT group_id FROM outbox WHERE parked_at IS NOT NULL AND published_at IS NULL
"""

PARK = """
UPDATE outbox SET parked_at = now(), parked_reason = r.reason
FROM unnest($1::bigint[], $2::text[]) AS r(id, reason)
WHERE outbox.id = r.id AND outbox.published_at IS NULL
"""

PARKED = f"""
SELECT {OUTBOX_COLUMNS}, parked_at, parked_reason FROM outbox
WHERE parked_at IS NOT NULL AND published_at IS NULL
  AND ($1::text[] IS NULL OR organization_id = ANY($1))
  AND ($2::text[] IS NULL OR group_id = ANY($2))
ORDER BY id
"""

# Retry: the group's parked rows go back in line, in their order.
RETRY_PARKED = """
UPDATE outbox SET parked_at = NULL, parked_reason = NULL
WHERE group_id = ANY($1) AND parked_at IS NOT NULL AND published_at IS NULL
"""

# Release: the event given up on is marked done without being published (its reason kept
# for the record), and the group's rows behind it go back in line.
RELEASE_PARKED = """
WITH released AS (
    UPDATE outbox SET published_at = now(),
                      parked_reason = parked_reason || ' (released, not published)'
    WHERE event_id = ANY($1::uuid[]) AND parked_at IS NOT NULL AND published_at IS NULL
    RETURNING group_id
)
UPDATE outbox SET parked_at = NULL, parked_reason = NULL
WHERE group_id IN (SELECT group_id FROM released) AND parked_at IS NOT NULL
  AND published_at IS NULL AND event_id <> ALL($1::uuid[])
"""


class Term(NamedTuple):
    epoch: int
    predecessor_released: bool


class LeaderSession:
    """The relay leader's own connection: its session lock is the leadership, and every
    read and mark goes through it, so a leader whose session is gone cannot go on."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.term: Term | None = None

    async def try_lead(self) -> Term | None:
        """Take the relay's lock if it is free, begin a term, and set the session up.

        Its marks need not wait for their WAL flush: a mark lost in a crash only means
        those rows are published again, with the same ids, which consumers must accept
        anyway. Its read is a walk of the unpublished index in id order; statistics taken
        before a burst (after a Kafka outage, say) would make the planner collect and sort
        the whole backlog instead."""
        if not await self._conn.fetchval(TRY_LOCK, *RELAY_LOCK):
            return None
        row = await self._conn.fetchrow(BEGIN_TERM)
        assert row is not None
        await self._conn.execute(LEADER_SETTINGS)
        self.term = Term(row["epoch"], row["released"])
        return self.term

    async def hand_over(self, *, clean: bool) -> None:
        """End the term; `clean`: nothing is on its way to Kafka, so the next leader need
        not wait for this one's deliveries."""
        if self.term is not None and clean:
            await self._conn.execute(END_TERM, self.term.epoch)
        await self._conn.execute(UNLOCK, *RELAY_LOCK)
        self.term = None

    async def alive(self) -> None:
        """Raises if the session, and with it the leadership, is gone."""
        await self._conn.execute("SELECT 1")

    async def unpublished(self, limit: int) -> list[OutboxRow]:
        return [OutboxRow.from_record(r) for r in await self._conn.fetch(SELECT_UNPUBLISHED, limit)]

    async def mark_published(self, ids: Sequence[int]) -> None:
        await self._conn.execute(MARK_PUBLISHED, list(ids))

    async def parked_groups(self) -> set[str]:
        return {r["group_id"] for r in await self._conn.fetch(PARKED_GROUPS)}

    async def park(self, reasons: Sequence[tuple[int, str]]) -> None:
        await self._conn.execute(PARK, [i for i, _ in reasons], [r for _, r in reasons])


class PostgresOutbox:
    """The outbox as the relay and the pruner see it: a leader session per term, pruning,
    and the backlog's size."""

    def __init__(self, pool: Pool, *, published_externally: bool = False) -> None:
        self._pool = pool
        self._prune_outbox = PRUNE_OUTBOX_BY_AGE if published_externally else PRUNE_OUTBOX

    async def prune(
        self, outbox_after_s: float, processed_after_s: float, batch: int
    ) -> tuple[int, int]:
        """Outbox rows (published ones, unless an external publisher that marks none reads
        them) and processed-command records past their retention, deleted."""
        return (
            await prune(self._pool, self._prune_outbox, outbox_after_s, batch),
            await prune(self._pool, PRUNE_PROCESSED, processed_after_s, batch),
        )

    async def backlog(self) -> Backlog:
        return await backlog(self._pool)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[LeaderSession]:
        async with self._pool.acquire() as conn:
            yield LeaderSession(conn)


class Backlog(NamedTuple):
    rows: int
    oldest_age: float
    parked: int


PARKED_COUNT = "SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL AND published_at IS NULL"


async def parked_count(pool: Pool) -> int:
    return int(await pool.fetchval(PARKED_COUNT))


async def backlog(pool: Pool) -> Backlog:
    """Rows waiting to be published, the age of the oldest, and rows parked."""
    row = await pool.fetchrow(BACKLOG)
    assert row is not None
    return Backlog(int(row["rows"]), float(row["oldest_age"] or 0.0), int(row["parked"]))


async def prune(pool: Pool, statement: str, older_than_s: float, batch_size: int) -> int:
    """Delete in small batches, so no lock is held for long and autovacuum keeps up."""
    total = 0
    while True:
        status = await pool.execute(statement, older_than_s, batch_size)
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < batch_size:
            return total
