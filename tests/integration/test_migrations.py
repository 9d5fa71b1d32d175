"""Migrations against a fresh PostgreSQL database, as two instances starting at once see it."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from service.adapters.postgres.command_store import NAME_INDEX, CommandStore
from service.adapters.postgres.db import create_pool, migrate, migration_files
from service.config import Settings
from service.domain.model import name_key
from service.domain.ports import AnyCommand
from service.handlers import Incoming, apply_commands
from tests.unit.fakes import ORG, OTHER_ORG, create, delete, update


@pytest.fixture
async def empty_database(endpoints: tuple[str, str]) -> AsyncIterator[str]:
    admin_url, _ = endpoints
    name = f"cg_migrate_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_url)
    # The C locale's lower() folds ASCII only, as some production databases' does.
    await conn.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE 'C'")
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


T0 = datetime(2026, 3, 1, tzinfo=UTC)

# Groups as 0001's index let them be: it compared lower(name), which here folds ASCII only.
BEFORE_0002 = [
    # id, organization, name, created after T0 (s), deleted
    ("grp_1", ORG, "ΟΔΟΣ", 0, False),
    ("grp_0", ORG, "οδος", 1, False),  # younger, though its id sorts first
    ("grp_2", ORG, "Straße", 0, False),
    ("grp_3", ORG, "STRASSE", 0, False),  # as old: the lower id keeps the name
    ("grp_4", ORG, "Caf\u00e9", 0, True),
    ("grp_5", ORG, "CAFE\u0301", 1, False),  # only a deleted group shared its key
    ("grp_6", OTHER_ORG, "οδος", 2, False),
]

INSERT_0001 = """
INSERT INTO customer_groups (id, organization_id, name, version, created_at, updated_at,
                             deleted_at)
SELECT id, organization_id, name, 1, created_at, created_at,
       CASE WHEN deleted THEN created_at END
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bool[])
     AS r(id, organization_id, name, created_at, deleted)
"""

INSERT_MANY_0001 = """
INSERT INTO customer_groups (id, organization_id, name, version, created_at, updated_at)
SELECT 'grp_many-' || i, $1, 'Group ' || i || ' ΟΔΟΣ', 1, $2, $2
FROM generate_series(1, $3::int) AS i
"""


async def codes(store: CommandStore, *commands: AnyCommand) -> list[int]:
    return [r.code for r in await apply_commands(store, [Incoming(c) for c in commands])]


async def test_0002_gives_existing_groups_their_name_keys_and_sets_colliding_ones_aside(
    empty_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await create_pool(Settings(database_url=empty_database), min_size=1)
    try:
        assert await migrate(pool, up_to="0001_init") == ["0001_init"]
        columns = list(zip(*BEFORE_0002, strict=True))
        created = [T0 + timedelta(seconds=s) for s in columns[3]]
        await pool.execute(INSERT_0001, *columns[:3], created, columns[4])
        await pool.execute(INSERT_MANY_0001, ORG, T0, 2500)

        with caplog.at_level(logging.WARNING, logger="service.adapters.postgres.db"):
            applied = await migrate(pool)

        assert applied[0] == "0002_name_key"
        rows = await pool.fetch("SELECT id, name, name_key FROM customer_groups")
        assert len(rows) == len(BEFORE_0002) + 2500
        set_aside = {"grp_0": "grp_1", "grp_3": "grp_2"}
        for row in rows:
            key = name_key(row["name"])
            if row["id"] in set_aside:
                key += f" (DUPLICATE {row['id']})"
            assert row["name_key"] == key, row
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == len(set_aside)
        for group_id, holder in set_aside.items():
            assert any(f"group {group_id} " in w and f"group {holder};" in w for w in warnings)

        nullable = await pool.fetchval(
            "SELECT is_nullable FROM information_schema.columns"
            " WHERE table_name = 'customer_groups' AND column_name = 'name_key'"
        )
        assert nullable == "NO"
        index = await pool.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE indexname = $1", NAME_INDEX
        )
        assert index.startswith("CREATE UNIQUE INDEX")
        assert index.endswith("(organization_id, name_key) WHERE (deleted_at IS NULL)")

        # The holders keep their names; the groups set aside change only by leaving them.
        store = CommandStore(pool)
        assert await codes(store, create("Οδος"), create("strasse"), create("CAFÉ")) == [
            409,
            409,
            409,
        ]
        assert await codes(
            store, update("grp_0", description="d"), update("grp_1", description="d")
        ) == [409, 200]
        assert await codes(store, update("grp_3", name="Straße")) == [409]
        assert await codes(store, update("grp_0", name="Odos 2"), delete("grp_3")) == [200, 200]
        assert await pool.fetchval(
            "SELECT name_key FROM customer_groups WHERE id = 'grp_0'"
        ) == name_key("Odos 2")
        assert await codes(store, create("ΟΔΟΣ", OTHER_ORG)) == [409]
    finally:
        await pool.close()
