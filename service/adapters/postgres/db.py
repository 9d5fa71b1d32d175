"""The PostgreSQL pool and schema migrations."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from importlib import resources

import asyncpg

from service.adapters.postgres import locks
from service.config import Settings
from service.domain.model import name_key
from service.observability import command_ids

log = logging.getLogger(__name__)

_MIGRATION_LOCK = (locks.MIGRATIONS, 1)

Pool = asyncpg.Pool
# What a pool hands out; it behaves as a connection for every use here.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A release that sends no reset query; asyncpg still rolls back an open transaction."""


async def create_pool(
    settings: Settings,
    *,
    min_size: int | None = None,
    max_size: int | None = None,
    stateless: bool = False,
) -> Pool:
    """`stateless`: for users that leave no session state behind (no SET, LISTEN, cursor or
    session lock), whose connections need no reset query, a round trip, on release."""
    return await asyncpg.create_pool(
        settings.database_url.get_secret_value(),
        min_size=settings.database_pool_min if min_size is None else min_size,
        max_size=settings.database_pool_max if max_size is None else max_size,
        reset=_keep_session if stateless else None,
        ssl=settings.postgres_ssl(),
        command_timeout=60,
        server_settings={
            # Array and LIMIT parameters decide the right plan (index probes, not scans); a
            # cached generic plan does not know them and picks scans as the tables grow.
            "plan_cache_mode": "force_custom_plan",
            # A batch's lookups are short index probes; starting parallel workers for them
            # (the planner will, for large batches) costs more than it saves.
            "max_parallel_workers_per_gather": "0",
        },
    )


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("service") / "migrations"
    files = sorted((p.name, p) for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), path.read_text()) for name, path in files]


async def migrate(pool: Pool, *, up_to: str | None = None) -> list[str]:
    """Apply the migrations not applied yet (those up to version `up_to`, if given); the
    advisory lock lets instances start at once."""
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1, $2)", *_MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, sql in migration_files():
                if up_to is not None and version > up_to:
                    break
                if version in done:
                    continue
                async with conn.transaction():
                    await _run_migration(conn, sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)", version
                    )
                log.info("applied migration %s", version)
                applied.append(version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1, $2)", *_MIGRATION_LOCK)
    return applied


# What SQL cannot compute (the domain's name key) a migration leaves to a Python step,
# named on a line of its own where it is to run, in the migration's transaction.
_STEP = re.compile(r"^-- python: (\w+)$", re.MULTILINE)

_FILL_BATCH = 1000

_GROUP_NAMES = """
SELECT id, name FROM customer_groups WHERE id > $1 ORDER BY id LIMIT $2
"""

_SET_NAME_KEYS = """
UPDATE customer_groups AS g SET name_key = k.name_key
FROM unnest($1::text[], $2::text[]) AS k(id, name_key)
WHERE g.id = k.id AND g.id = ANY($1::text[])
"""

# A key holds no ASCII capitals, so no name can ever be given one of these.
_MARK_DUPLICATES = """
UPDATE customer_groups AS g SET name_key = g.name_key || ' (DUPLICATE ' || g.id || ')'
FROM (
    SELECT id, first_value(id) OVER same_key AS holder,
           row_number() OVER same_key AS n
    FROM customer_groups
    WHERE deleted_at IS NULL
    WINDOW same_key AS (PARTITION BY organization_id, name_key ORDER BY created_at, id)
) AS d
WHERE g.id = d.id AND d.n > 1
RETURNING g.organization_id, g.id, g.name, d.holder
"""


async def fill_name_keys(conn: Connection) -> None:
    """Give every group its name key, in batches.

    Live groups whose names differed under lower() but share a key (say "ΟΔΟΣ" and
    "οδος" in a database whose lower() does not fold the final sigma) cannot all hold it:
    the oldest keeps it, and each other one is marked and logged, neither renamed nor
    deleted, for its owner to rename or delete."""
    after = ""
    while rows := await conn.fetch(_GROUP_NAMES, after, _FILL_BATCH):
        await conn.execute(
            _SET_NAME_KEYS, [r["id"] for r in rows], [name_key(r["name"]) for r in rows]
        )
        after = rows[-1]["id"]
    for row in await conn.fetch(_MARK_DUPLICATES):
        log.warning(
            "organization %s: group %s (%r) shares its name key with the older group %s;"
            " a change that keeps its name is refused until it is renamed or deleted",
            row["organization_id"],
            row["id"],
            row["name"],
            row["holder"],
            extra=command_ids(row["organization_id"], group_id=row["id"]),
        )


MigrationStep = Callable[[Connection], Awaitable[None]]
_STEPS: dict[str, MigrationStep] = {"fill_name_keys": fill_name_keys}


async def _run_migration(conn: Connection, sql: str) -> None:
    parts = _STEP.split(sql)
    for statements, step in zip(parts[::2], [*parts[1::2], None], strict=True):
        if statements.strip():
            await conn.execute(statements)
        if step is not None:
            await _STEPS[step](conn)
