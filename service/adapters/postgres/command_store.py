"""Commands' effects in PostgreSQL: one transaction per batch, loaded and written with
set-based statements, while each command keeps its own outcome.

One concern that reads best whole: the batch's one read and one write are long statements
whose numbered parameters are bound by the code below them, and they change together."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from opentelemetry.trace import NoOpTracer, Tracer

from service.adapters.postgres import locks
from service.adapters.postgres.db import Connection, Pool
from service.domain.commands import AddCustomers, CreateGroup, RemoveCustomers, UpdateGroup
from service.domain.errors import BatchConflict, GroupAlreadyExists, GroupNameTaken, Rejected
from service.domain.model import Group, name_key
from service.domain.ports import AnyCommand
from service.domain.results import CommandResult
from service.spans import database_span
from service.unit_of_work import Processed, Staging

GROUP_COLUMNS = (
    "id, organization_id, name, description, platform_id, version,"
    " created_at, updated_at, deleted_at, customer_count"
)

# Every writer of an organization's groups takes this lock first, so two consumers that
# briefly share a partition during a rebalance cannot both apply one command, and one
# group's outbox ids are handed out in the order its changes commit. Keys are taken in
# order, so two batches never wait for each other in a cycle.
_LOCK = f"""
SELECT pg_advisory_xact_lock({locks.ORGANIZATIONS}, k)
FROM (SELECT DISTINCT hashtext(o) AS k FROM unnest(ARRAY[{{}}]::text[]) AS o
      ORDER BY k) AS keys
"""

# A lone command's write may be refused by the name index and then recorded as rejected,
# so its batch sets a savepoint to go back to.
LONE_SAVEPOINT = "lone_command"


def begin_batch(organizations: Iterable[str], *, lone: bool = False) -> str:
    """BEGIN, the organizations' locks (and a lone command's savepoint) as one simple query:
    one round trip instead of two or three. That protocol takes no parameters, so the ids go
    in as literals; they are validated to a quote-free alphabet, and quoted all the same."""
    literals = ", ".join("'" + o.replace("'", "''") + "'" for o in sorted(set(organizations)))
    savepoint = f"; SAVEPOINT {LONE_SAVEPOINT}" if lone else ""
    return f"BEGIN; {_LOCK.format(literals)}{savepoint}"


# Each lookup is a LATERAL probe of an index per key: a join would let the planner hash
# the whole table (and spill it to disk) once it has grown, and the cost would grow with it.
# LIMIT 1 (each key matches at most one row) keeps the planner from turning a probe back
# into a join.
_PROCESSED_BY_KEY = """
FROM unnest($1::text[], $2::text[]) AS k(organization_id, command_id)
CROSS JOIN LATERAL (
    SELECT * FROM processed_commands AS p
    WHERE p.organization_id = k.organization_id AND p.command_id = k.command_id
    LIMIT 1
) AS p
"""

SELECT_PROCESSED = f"""
SELECT p.organization_id, p.command_id, p.fingerprint, p.result::text AS result
{_PROCESSED_BY_KEY}
"""

_GROUP_FIELDS = (
    "g.id, g.name, g.description, g.platform_id, g.version, g.created_at, g.updated_at,"
    " g.deleted_at, g.customer_count"
)

# Everything a batch reads, in one round trip: its commands' earlier results, the groups
# they name by id, the live groups holding the names they ask for, and which of the
# customers their membership commands name are members.
_NO_GROUP = (
    "NULL AS id, NULL AS name, NULL AS description, NULL AS platform_id,"
    " NULL::int AS version, NULL::timestamptz AS created_at, NULL::timestamptz AS updated_at,"
    " NULL::timestamptz AS deleted_at, NULL::int AS customer_count, NULL AS name_key"
)
LOAD_BATCH = f"""
SELECT p.organization_id, p.command_id, p.fingerprint, p.result::text AS result,
       {_NO_GROUP}, NULL AS member_group, NULL AS customer_id, NULL::timestamptz AS added_at
{_PROCESSED_BY_KEY}
UNION ALL
SELECT g.organization_id, NULL, NULL, NULL, {_GROUP_FIELDS}, g.name_key, NULL, NULL, NULL
FROM unnest($3::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT * FROM customer_groups AS g WHERE g.id = k.id LIMIT 1) AS g
UNION ALL
SELECT g.organization_id, NULL, NULL, NULL, {_GROUP_FIELDS}, g.name_key, NULL, NULL, NULL
FROM unnest($4::text[], $5::text[]) AS k(organization_id, name_key)
CROSS JOIN LATERAL (
    SELECT * FROM customer_groups AS g
    WHERE g.organization_id = k.organization_id AND g.name_key = k.name_key
      AND g.deleted_at IS NULL
    LIMIT 1
) AS g
UNION ALL
SELECT m.organization_id, NULL, NULL, NULL, {_NO_GROUP}, m.group_id, m.customer_id, m.added_at
FROM unnest($6::text[], $7::text[], $8::text[]) AS k(organization_id, group_id, customer_id)
CROSS JOIN LATERAL (
    SELECT * FROM group_members AS m
    WHERE m.organization_id = k.organization_id AND m.group_id = k.group_id
      AND m.customer_id = k.customer_id
    LIMIT 1
) AS m
"""

# Everything a batch writes, in one round trip. The parts share one snapshot and none
# reads another's rows; should the parts' order ever trip the name index (a name freed and
# taken in one batch), the batch is retried one command at a time. unnest yields rows in
# array order, so outbox ids follow the order the changes were made. The update's `= ANY`
# gives the planner an index condition: with the join's alone it hashed a scan of the whole
# table, whose cost grew with it. Members are removed by probing their key, for the same
# reason.
WRITE_BATCH = f"""
WITH updated AS (
    UPDATE customer_groups AS g
    SET name = u.name, name_key = u.name_key, description = u.description,
        platform_id = u.platform_id, version = u.version, updated_at = u.updated_at,
        deleted_at = u.deleted_at, customer_count = u.customer_count
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                $7::timestamptz[], $8::timestamptz[], $9::int[])
         AS u(id, name, name_key, description, platform_id, version, updated_at, deleted_at,
              customer_count)
    WHERE g.id = u.id AND g.id = ANY($1::text[])
), inserted AS (
    INSERT INTO customer_groups ({GROUP_COLUMNS}, name_key)
    SELECT * FROM unnest($10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
                         $15::int[], $16::timestamptz[], $17::timestamptz[], $18::timestamptz[],
                         $19::int[], $20::text[])
), events AS (
    INSERT INTO outbox (event_type, organization_id, group_id, group_version, command_id,
                        traceparent, payload, occurred_at)
    SELECT * FROM unnest($21::text[], $22::text[], $23::text[], $24::int[], $25::text[],
                         $26::text[], $27::json[], $28::timestamptz[])
), members_added AS (
    INSERT INTO group_members (organization_id, group_id, customer_id, added_at)
    SELECT * FROM unnest($33::text[], $34::text[], $35::text[], $36::timestamptz[])
), members_removed AS (
    DELETE FROM group_members WHERE ctid = ANY(ARRAY(
        SELECT m.ctid
        FROM unnest($37::text[], $38::text[], $39::text[]) AS k(organization_id, group_id,
                                                                 customer_id)
        CROSS JOIN LATERAL (
            SELECT ctid FROM group_members AS m
            WHERE m.organization_id = k.organization_id AND m.group_id = k.group_id
              AND m.customer_id = k.customer_id
            LIMIT 1
        ) AS m))
), purges AS (
    INSERT INTO member_purges (organization_id, group_id)
    SELECT * FROM unnest($40::text[], $41::text[])
)
INSERT INTO processed_commands (organization_id, command_id, fingerprint, result)
SELECT * FROM unnest($29::text[], $30::text[], $31::text[], $32::json[])
"""

NAME_INDEX = "customer_groups_live_name_key"
GROUPS_PKEY = "customer_groups_pkey"


def group_from_row(row: asyncpg.Record) -> Group:
    return Group(
        id=row["id"],
        organization_id=row["organization_id"],
        name=row["name"],
        description=row["description"],
        platform_id=row["platform_id"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        deleted_at=row["deleted_at"],
        customer_count=row["customer_count"],
    )


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


class PostgresBatch(Staging):
    """A Staging loaded from and written to PostgreSQL inside one transaction."""

    def __init__(self, conn: Connection, tracer: Tracer) -> None:
        super().__init__()
        self._conn = conn
        self._tracer = tracer
        self._size = 0

    async def load(self, commands: Sequence[AnyCommand]) -> None:
        """Read what the commands need; the caller has begun the transaction and taken the
        organizations' locks (begin_batch), so this snapshot already sees their last writes."""
        self._size = len(commands)
        named = [
            (c.organization_id, name_key(c.name))
            for c in commands
            if isinstance(c, CreateGroup | UpdateGroup) and c.name is not None
        ]
        asked = [
            (c.organization_id, c.group_id, customer_id)
            for c in commands
            if isinstance(c, AddCustomers | RemoveCustomers)
            for customer_id in c.customer_ids
        ]
        rows = await self._conn.fetch(
            LOAD_BATCH,
            [c.organization_id for c in commands],
            [c.command_id for c in commands],
            [c.group_id for c in commands if c.group_id is not None],
            [organization for organization, _ in named],
            [name for _, name in named],
            [organization for organization, _, _ in asked],
            [group for _, group, _ in asked],
            [customer for _, _, customer in asked],
        )
        for row in rows:
            if row["customer_id"] is not None:
                self.loaded_members[row["member_group"], row["customer_id"]] = row["added_at"]
                continue
            if row["id"] is not None:
                group = group_from_row(row)
                self.remember(group, holds_name=row["name_key"] == name_key(group.name))
                continue
            result = CommandResult.from_json(row["organization_id"], orjson.loads(row["result"]))
            key = (row["organization_id"], row["command_id"])
            self.processed[key] = Processed(row["fingerprint"], result)
        self.members = dict(self.loaded_members)

    async def flush(self) -> Rejected | None:
        """Write what the batch changed; the caller's transaction commits it.

        A lone command whose change the database refuses (its unique index is the final
        judge of names) is recorded as rejected, and that reason is returned. Only a batch of
        one command qualifies: in a larger one, redeliveries write no record, so which command
        the reason belongs to is not known here; its caller retries the commands one by one."""
        if self._size != 1 or not self.changed:
            await self._write()
            return None
        try:
            await self._write()
        except asyncpg.UniqueViolationError as error:
            reason = conflict_reason(error, self)
            if reason is None:
                raise
            await self._conn.execute(f"ROLLBACK TO SAVEPOINT {LONE_SAVEPOINT}")
            self.reject_all(reason)
            await self._write()
            return reason
        return None

    async def _write(self) -> None:
        with database_span(self._tracer, "INSERT", "write commands", self._size):
            await self._write_batch()

    async def _write_batch(self) -> None:
        changed = self.changed.values()
        updated = [g for g in changed if g.id not in self.new_ids]
        inserted = [g for g in changed if g.id in self.new_ids]
        events = [r.event for r in self.outbox]
        added, removed = self.member_changes()
        await self._conn.execute(
            WRITE_BATCH,
            [g.id for g in updated],
            [g.name for g in updated],
            [name_key(g.name) for g in updated],
            [g.description for g in updated],
            [g.platform_id for g in updated],
            [g.version for g in updated],
            [g.updated_at for g in updated],
            [g.deleted_at for g in updated],
            [g.customer_count for g in updated],
            [g.id for g in inserted],
            [g.organization_id for g in inserted],
            [g.name for g in inserted],
            [g.description for g in inserted],
            [g.platform_id for g in inserted],
            [g.version for g in inserted],
            [g.created_at for g in inserted],
            [g.updated_at for g in inserted],
            [g.deleted_at for g in inserted],
            [g.customer_count for g in inserted],
            [name_key(g.name) for g in inserted],
            [e.type for e in events],
            [e.group.organization_id for e in events],
            [e.group.id for e in events],
            [e.group.version for e in events],
            [r.command_id for r in self.outbox],
            [r.traceparent for r in self.outbox],
            [_json(e.payload()) for e in events],
            [r.occurred_at for r in self.outbox],
            [c.organization_id for c, _ in self.records],
            [c.command_id for c, _ in self.records],
            [p.fingerprint for _, p in self.records],
            [_json(p.result.to_json()) for _, p in self.records],
            [g.organization_id for g, _, _ in added],
            [g.id for g, _, _ in added],
            [c for _, c, _ in added],
            [at for _, _, at in added],
            [g.organization_id for g, _ in removed],
            [g.id for g, _ in removed],
            [c for _, c in removed],
            [g.organization_id for g in self.purged],
            [g.id for g in self.purged],
        )

    def reject_all(self, reason: Rejected) -> None:
        """Keep only the processed records, now saying `reason` (for a lone conflicting command)."""
        self.changed.clear()
        self.new_ids.clear()
        self.outbox.clear()
        self.members = dict(self.loaded_members)
        self.purged.clear()
        self.records = [
            (c, Processed(p.fingerprint, _rejected(c, reason))) for c, p in self.records
        ]


def _rejected(command: AnyCommand, reason: Rejected) -> CommandResult:
    return CommandResult.rejected(command.command_id, command.organization_id, reason)


def conflict_reason(error: asyncpg.UniqueViolationError, batch: PostgresBatch) -> Rejected | None:
    """The domain's word for a unique violation the staged checks did not foresee."""
    groups = list(batch.changed.values())
    if len(groups) != 1:
        return None
    if error.constraint_name == NAME_INDEX:
        return GroupNameTaken(groups[0].name)
    if error.constraint_name == GROUPS_PKEY:
        return GroupAlreadyExists(groups[0].id)
    return None


class CommandStore:
    """Opens batch transactions on the pool."""

    def __init__(self, pool: Pool, tracer: Tracer | None = None) -> None:
        self._pool = pool
        self._tracer = tracer or NoOpTracer()

    @asynccontextmanager
    async def batch(self, commands: Sequence[AnyCommand]) -> AsyncIterator[PostgresBatch]:
        count = len(commands)
        try:
            with database_span(self._tracer, "TRANSACTION", "apply commands", count):
                async with self._pool.acquire() as conn:
                    organizations = [c.organization_id for c in commands]
                    await conn.execute(begin_batch(organizations, lone=count == 1))
                    try:
                        batch = PostgresBatch(conn, self._tracer)
                        with database_span(self._tracer, "SELECT", "load commands", count):
                            await batch.load(commands)
                        yield batch
                    except BaseException:
                        # Should the connection be broken, the pool's release closes it.
                        with contextlib.suppress(Exception):
                            await conn.execute("ROLLBACK")
                        raise
                    await conn.execute("COMMIT")
        except asyncpg.UniqueViolationError as error:
            raise BatchConflict(str(error)) from error
