"""Migrations against a fresh PostgreSQL database, as two instances starting at once see it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from service.adapters.db import create_pool, migrate, migration_files
from service.config import Settings


@pytest.fixture
async def empty_database(endpoints: tuple[str, str]) -> AsyncIterator[str]:
    admin_url, _ = endpoints
    name = f"cg_migrate_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


async def test_two_instances_migrating_at_once_apply_each_migration_once(
    empty_database: str,
) -> None:
    settings = Settings(database_url=empty_database)
    pools = [await create_pool(settings, min_size=1) for _ in range(2)]
    try:
        applied = await asyncio.gather(*(migrate(pool) for pool in pools))
        versions = [version for version, _ in migration_files()]
        # One instance applied everything; the other found nothing left to do.
        assert sorted(applied, key=len) == [[], versions]
        recorded = await pools[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in recorded] == versions
        assert await migrate(pools[1]) == []
    finally:
        for pool in pools:
            await pool.close()
