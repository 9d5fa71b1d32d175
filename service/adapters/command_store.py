"""Commands' effects in PostgreSQL: one transaction per batch, loaded and written with
set-based statements, while each command keeps its own outcome."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson

from service.adapters.db import Connection, Pool
from service.adapters.staging import Processed, Staging
from service.domain.commands import DeleteGroup
from service.domain.errors import BatchConflict, GroupAlreadyExists, GroupNameTaken, Rejected
from service.domain.model import Group, name_key
from service.domain.ports import AnyCommand
from service.domain.results import CommandResult

GROUP_COLUMNS = (
    "id, organization_id, name, description, platform_id, version,"
    " created_at, updated_at, deleted_at"
)

_EVENT_COLUMNS = (
    "event_type, organization_id, group_id, group_version, command_id, traceparent, payload,"
    " occurred_at"
)

# Every writer of an organization's groups takes this lock first, so two consumers that
# briefly share a partition during a rebalance cannot both apply one command, and one
# group's outbox ids are handed out in the order its changes commit.
_LOCK = """
SELECT pg_advisory_xact_lock(k)
FROM (SELECT DISTINCT hashtextextended(o, 7) AS k FROM unnest(ARRAY[{}]::text[]) AS o
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
    " g.deleted_at"
)

# Everything a batch reads, in one round trip: its commands' earlier results, then the
# groups they name by id, then the live groups holding the names they ask for.
LOAD_BATCH = f"""
SELECT p.organization_id, p.command_id, p.fingerprint, p.result::text AS result,
       NULL AS id, NULL AS name, NULL AS description, NULL AS platform_id,
       NULL::int AS version, NULL::timestamptz AS created_at,
       NULL::timestamptz AS updated_at, NULL::timestamptz AS deleted_at
{_PROCESSED_BY_KEY}
UNION ALL
SELECT g.organization_id, NULL, NULL, NULL, {_GROUP_FIELDS}
FROM unnest($3::text[]) AS k(id)
CROSS JOIN LATERAL (SELECT * FROM customer_groups AS g WHERE g.id = k.id LIMIT 1) AS g
UNION ALL
SELECT g.organization_id, NULL, NULL, NULL, {_GROUP_FIELDS}
FROM unnest($4::text[], $5::text[]) AS k(organization_id, name_key)
CROSS JOIN LATERAL (
    SELECT * FROM customer_groups AS g
    WHERE g.organization_id = k.organization_id AND lower(g.name) = k.name_key
      AND g.deleted_at IS NULL
    LIMIT 1
) AS g
"""

# Everything a batch writes, in one round trip. Rows travel as JSON, one document per
# table: asyncpg encodes array parameters element by element (0.4-1.4 us each, 15 us a
# command), and the service's one thread, not the database, is what limits throughput.
# The parts share one snapshot and none reads another's rows; should the parts' order ever
# trip the name index (a name freed and taken in one batch), the batch is retried one
# command at a time. json_to_recordset yields rows in document order, so outbox ids follow
# the order the changes were made. The update's `= ANY` gives the planner an index
# condition: with the join's alone it hashed a scan of the whole table, whose cost grew
# with it (200,000 commands into an empty table: a write took 24-38 ms, against 20-25 ms).
WRITE_BATCH = f"""
WITH updated AS (
    UPDATE customer_groups AS g
    SET name = u.name, description = u.description, platform_id = u.platform_id,
        version = u.version, updated_at = u.updated_at, deleted_at = u.deleted_at
    FROM json_to_recordset($1::json)
         AS u(id text, name text, description text, platform_id text, version int,
              updated_at timestamptz, deleted_at timestamptz)
    WHERE g.id = u.id AND g.id = ANY($2::text[])
), inserted AS (
    INSERT INTO customer_groups ({GROUP_COLUMNS})
    SELECT {GROUP_COLUMNS}
    FROM json_to_recordset($3::json)
         AS g(id text, organization_id text, name text, description text, platform_id text,
              version int, created_at timestamptz, updated_at timestamptz,
              deleted_at timestamptz)
), events AS (
    INSERT INTO outbox ({_EVENT_COLUMNS})
    SELECT {_EVENT_COLUMNS}
    FROM json_to_recordset($4::json)
         AS e(event_type text, organization_id text, group_id text, group_version int,
              command_id text, traceparent text, payload json, occurred_at timestamptz)
)
INSERT INTO processed_commands (organization_id, command_id, fingerprint, result)
SELECT organization_id, command_id, fingerprint, result
FROM json_to_recordset($5::json)
     AS p(organization_id text, command_id text, fingerprint text, result json)
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
    )


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def event_row(
    event_type: str,
    group: Group,
    payload: dict[str, Any],
    command_id: str,
    traceparent: str | None,
) -> dict[str, Any]:
    """An outbox row as WRITE_BATCH reads it; the change happened when the group was
    last updated."""
    return {
        "event_type": event_type,
        "organization_id": group.organization_id,
        "group_id": group.id,
        "group_version": group.version,
        "command_id": command_id,
        "traceparent": traceparent,
        "payload": payload,
        "occurred_at": group.updated_at,
    }


def processed_row(
    organization_id: str, command_id: str, fingerprint: str, result: dict[str, Any]
) -> dict[str, Any]:
    """A processed-command record as WRITE_BATCH reads it."""
    return {
        "organization_id": organization_id,
        "command_id": command_id,
        "fingerprint": fingerprint,
        "result": result,
    }


def write_parameters(
    updated: Sequence[Group],
    inserted: Sequence[Group],
    events: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
) -> tuple[Any, ...]:
    """WRITE_BATCH's parameters. orjson writes a Group field by field, its fields being
    the table's columns."""
    return (
        _json(updated),
        [g.id for g in updated],
        _json(inserted),
        _json(events),
        _json(records),
    )


class PostgresBatch(Staging):
    """A Staging loaded from and written to PostgreSQL inside one transaction."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self._conn = conn
        self._size = 0

    async def load(self, commands: Sequence[AnyCommand]) -> None:
        """Read what the commands need; the caller has begun the transaction and taken the
        organizations' locks (begin_batch), so this snapshot already sees their last writes."""
        self._size = len(commands)
        named = [
            name_key(c.organization_id, c.name)
            for c in commands
            if not isinstance(c, DeleteGroup) and c.name is not None
        ]
        rows = await self._conn.fetch(
            LOAD_BATCH,
            [c.organization_id for c in commands],
            [c.command_id for c in commands],
            [c.group_id for c in commands if c.group_id is not None],
            [organization for organization, _ in named],
            [name for _, name in named],
        )
        for row in rows:
            if row["id"] is not None:
                self.remember(group_from_row(row))
                continue
            result = CommandResult.from_json(row["organization_id"], orjson.loads(row["result"]))
            key = (row["organization_id"], row["command_id"])
            self.processed[key] = Processed(row["fingerprint"], result)

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
        changed = self.changed.values()
        await self._conn.execute(
            WRITE_BATCH,
            *write_parameters(
                [g for g in changed if g.id not in self.new_ids],
                [g for g in changed if g.id in self.new_ids],
                [
                    event_row(r.event.type, r.event.group, r.event.payload(), r.command_id,
                              r.traceparent)
                    for r in self.outbox
                ],
                [
                    processed_row(c.organization_id, c.command_id, p.fingerprint,
                                  p.result.to_json())
                    for c, p in self.records
                ],
            ),
        )  # fmt: skip

    def reject_all(self, reason: Rejected) -> None:
        """Keep only the processed records, now saying `reason` (for a lone conflicting command)."""
        self.changed.clear()
        self.new_ids.clear()
        self.outbox.clear()
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

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    @asynccontextmanager
    async def batch(self, commands: Sequence[AnyCommand]) -> AsyncIterator[PostgresBatch]:
        try:
            async with self._pool.acquire() as conn:
                organizations = [c.organization_id for c in commands]
                await conn.execute(begin_batch(organizations, lone=len(commands) == 1))
                try:
                    batch = PostgresBatch(conn)
                    await batch.load(commands)
                    yield batch
                except BaseException:
                    # Should the connection be broken, the pool's release closes it instead.
                    with contextlib.suppress(Exception):
                        await conn.execute("ROLLBACK")
                    raise
                await conn.execute("COMMIT")
        except asyncpg.UniqueViolationError as error:
            raise BatchConflict(str(error)) from error
