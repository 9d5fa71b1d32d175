"""The PostgreSQL pool and schema migrations."""

from __future__ import annotations

import logging
from importlib import resources

import asyncpg

from service.config import Settings

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every instance that migrates.
_MIGRATION_LOCK = 0x6375_7374_6772_70

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
            # A batch's lookups are index probes that take milliseconds; starting parallel
            # workers for them (the planner will, for large batches) costs more than it saves.
            "max_parallel_workers_per_gather": "0",
        },
    )


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("service") / "migrations"
    files = sorted((p.name, p) for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), path.read_text()) for name, path in files]


async def migrate(pool: Pool) -> list[str]:
    """Apply the migrations not applied yet; the advisory lock lets instances start at once."""
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, sql in migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)", version
                    )
                log.info("applied migration %s", version)
                applied.append(version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied
