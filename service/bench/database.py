"""The bench database's tables as a phase sets them up, with set-based statements: emptied,
preloaded with groups or members, or given an outbox backlog."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from service.adapters.postgres.db import Pool
from service.domain.model import format_time, name_key

SMALL_PRELOAD = 1000
# Followed by a number; the name key of the whole is this one's and the number.
PRELOADED_NAME = "Preloaded group "

EMPTY_TABLES = "TRUNCATE customer_groups, outbox, processed_commands, group_members, member_purges"
PRELOAD_GROUPS = """
    INSERT INTO customer_groups (id, organization_id, name, name_key, description,
                                 platform_id, version, created_at, updated_at,
                                 deleted_at)
    SELECT 'grp_pre-' || i, ($1::text[])[1 + i % cardinality($1::text[])],
           $3 || i, $4 || i, 'A group that was there before the benchmark',
           NULL, 1, now(), now(), NULL
    FROM generate_series(1, $2::int) AS i
    """
ANALYZE_GROUPS = "VACUUM ANALYZE customer_groups"
FILL_OUTBOX = """
    INSERT INTO outbox (event_type, organization_id, group_id, group_version,
                        command_id, traceparent, payload, occurred_at)
    SELECT 'group.created', o.org, 'grp_relay-' || i, 1, 'relay-' || i, NULL,
           json_build_object(
               'id', 'grp_relay-' || i, 'organization_id', o.org,
               'name', 'Relay group ' || i,
               'description', 'Customers of segment ' || i || ' with premium benefits',
               'platform_id', NULL, 'version', 1, 'created_at', $3::text,
               'updated_at', $3::text, 'deleted_at', NULL),
           now()
    FROM generate_series(1, $2::int) AS i,
         LATERAL (SELECT ($1::text[])[1 + i % cardinality($1::text[])] AS org) AS o
    """
COUNT_UNPUBLISHED = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
ADD_GROUPS = """
    INSERT INTO customer_groups (id, organization_id, name, name_key, description,
                                 platform_id, version, created_at, updated_at, deleted_at)
    SELECT g.id, g.organization_id, g.name, g.name_key, NULL, NULL, 1, now(), now(), NULL
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
         AS g(id, organization_id, name, name_key)
    """
PRELOAD_MEMBERS = """
    INSERT INTO group_members (organization_id, group_id, customer_id, added_at)
    SELECT $1, $2, $3 || i, now() FROM generate_series(1, $4::int) AS i
    """
# A group's customer_count is kept with it by the commands that change its members.
COUNT_PRELOADED = """
    UPDATE customer_groups SET customer_count = customer_count + $3
    WHERE organization_id = $1 AND id = $2
    """
ANALYZE_MEMBERS = "VACUUM ANALYZE group_members"
EMPTY_MEMBERS = "TRUNCATE group_members"
COUNT_MEMBERS = "SELECT count(*) FROM group_members"
COUNT_GROUP_MEMBERS = (
    "SELECT count(*) FROM group_members WHERE organization_id = $1 AND group_id = $2"
)
PURGE_QUEUED = (
    "SELECT EXISTS (SELECT 1 FROM member_purges WHERE organization_id = $1 AND group_id = $2)"
)


@dataclass(frozen=True)
class BenchDatabase:
    """The bench's own database; what is written to it is spread over `orgs`."""

    pool: Pool
    orgs: list[str]

    async def reset(self) -> None:
        await self.pool.execute(EMPTY_TABLES)

    async def preload(self, count: int) -> None:
        """`count` groups spread over the organizations."""
        await self.pool.execute(
            PRELOAD_GROUPS, self.orgs, count, PRELOADED_NAME, name_key(PRELOADED_NAME)
        )
        await self.pool.execute(ANALYZE_GROUPS)

    async def add_groups(self, groups: Sequence[tuple[str, str]]) -> None:
        """Live groups with no members, as (organization id, group id) pairs."""
        names = [f"Members group {group_id}" for _, group_id in groups]
        await self.pool.execute(
            ADD_GROUPS,
            [group_id for _, group_id in groups],
            [organization_id for organization_id, _ in groups],
            names,
            [name_key(name) for name in names],
        )

    async def preload_members(
        self, organization_id: str, group_id: str, count: int, customer_prefix: str
    ) -> None:
        """`count` members of one group, customer ids `customer_prefix` and a number."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(PRELOAD_MEMBERS, organization_id, group_id, customer_prefix, count)
            await conn.execute(COUNT_PRELOADED, organization_id, group_id, count)
        await self.pool.execute(ANALYZE_MEMBERS)

    async def empty_members(self) -> None:
        await self.pool.execute(EMPTY_MEMBERS)

    async def members(self) -> int:
        count: int = await self.pool.fetchval(COUNT_MEMBERS)
        return count

    async def group_members(self, organization_id: str, group_id: str) -> int:
        count: int = await self.pool.fetchval(COUNT_GROUP_MEMBERS, organization_id, group_id)
        return count

    async def purge_queued(self, organization_id: str, group_id: str) -> bool:
        queued: bool = await self.pool.fetchval(PURGE_QUEUED, organization_id, group_id)
        return queued

    async def fill_outbox(self, count: int) -> None:
        """`count` group.created rows with realistic payloads, committed in one transaction."""
        now = format_time(await self.pool.fetchval("SELECT now()"))
        await self.pool.execute(FILL_OUTBOX, self.orgs, count, now)

    async def unpublished_after(self, seconds: float) -> int:
        """Rows are marked after Kafka acknowledged them, a moment after they are visible."""
        deadline = time.perf_counter() + seconds
        while True:
            count: int = await self.pool.fetchval(COUNT_UNPUBLISHED)
            if count == 0 or time.perf_counter() > deadline:
                return count
            await asyncio.sleep(0.1)
