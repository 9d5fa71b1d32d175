"""The bench database's tables as a phase sets them up, with set-based statements: emptied,
preloaded with groups, or given an outbox backlog."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from service.adapters.postgres.db import Pool
from service.domain.model import format_time, name_key

SMALL_PRELOAD = 1000
# Followed by a number; the name key of the whole is this one's and the number.
PRELOADED_NAME = "Preloaded group "

EMPTY_TABLES = "TRUNCATE customer_groups, outbox, processed_commands"
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
