"""Group members in real PostgreSQL: the batch's set-based writes, customer_count under
concurrent writers, and the purge of a deleted group's members."""

from __future__ import annotations

import asyncio
import random

import asyncpg

from service.adapters.postgres.command_store import CommandStore
from service.adapters.postgres.members import MemberPurger
from service.config import Settings
from service.domain.ports import AnyCommand
from service.domain.results import CommandResult
from service.handlers import Incoming, apply_commands
from tests.unit.fakes import add_customers, create, delete, remove_customers


async def apply(store: CommandStore, *commands: AnyCommand) -> list[CommandResult]:
    return await apply_commands(store, [Incoming(c) for c in commands])


async def new_group(store: CommandStore) -> str:
    [result] = await apply(store, create(f"G {random.random()}"))
    assert result.group is not None
    return str(result.group["id"])


async def count_and_rows(pool: asyncpg.Pool, group_id: str) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT customer_count, (SELECT count(*) FROM group_members WHERE group_id = $1) AS n"
        " FROM customer_groups WHERE id = $1",
        group_id,
    )
    assert row is not None
    return row["customer_count"], row["n"]


async def test_a_batch_writes_its_net_membership_changes_and_the_count(
    pool: asyncpg.Pool,
) -> None:
    store = CommandStore(pool)
    gid = await new_group(store)
    results = await apply(
        store,
        add_customers(gid, "c1", "c2", "c3"),
        remove_customers(gid, "c2"),
        add_customers(gid, "c2", "c4"),
        remove_customers(gid, "c4"),
    )
    assert [r.customers for r in results] == [
        {"changed": 3, "unchanged": 0},
        {"changed": 1, "unchanged": 0},
        {"changed": 2, "unchanged": 0},
        {"changed": 1, "unchanged": 0},
    ]
    members = await pool.fetch(
        "SELECT customer_id FROM group_members WHERE group_id = $1 ORDER BY 1", gid
    )
    assert [m["customer_id"] for m in members] == ["c1", "c2", "c3"]
    assert await count_and_rows(pool, gid) == (3, 3)
    events = await pool.fetch(
        "SELECT event_type, group_version, payload->'customer_ids' AS ids FROM outbox"
        " WHERE group_id = $1 ORDER BY id",
        gid,
    )
    assert [(e["event_type"], e["group_version"], e["ids"]) for e in events] == [
        ("group.created", 1, None),
        ("group.customers_added", 2, '["c1","c2","c3"]'),
        ("group.customers_removed", 3, '["c2"]'),
        ("group.customers_added", 4, '["c2","c4"]'),
        ("group.customers_removed", 5, '["c4"]'),
    ]
    [again] = await apply(store, add_customers(gid, "c1", "c3"))
    assert again.customers == {"changed": 0, "unchanged": 2}


async def test_concurrent_writers_keep_the_count_equal_to_the_rows(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    """Two instances' command stores, each on its own connections, add and remove the same
    customers at once."""
    store = CommandStore(pool)
    gid = await new_group(store)
    customers = [f"c{i}" for i in range(40)]
    rng = random.Random(7)

    async def writer() -> None:
        for _ in range(30):
            chosen = rng.sample(customers, 10)
            make = add_customers if rng.random() < 0.6 else remove_customers
            await apply(store, make(gid, *chosen))

    await asyncio.gather(writer(), writer(), writer())
    count, rows = await count_and_rows(pool, gid)
    assert count == rows
    assert rows > 0


async def test_a_deleted_groups_100_000_members_leave_every_read_at_once_and_are_purged(
    pool: asyncpg.Pool,
) -> None:
    store = CommandStore(pool)
    gid = await new_group(store)
    for start in range(0, 100_000, 20_000):
        chunk = [f"cus_{i}" for i in range(start, start + 20_000)]
        await apply(
            store, *(add_customers(gid, *chunk[i : i + 1000]) for i in range(0, 20_000, 1000))
        )
    assert await count_and_rows(pool, gid) == (100_000, 100_000)
    [deleted] = await apply(store, delete(gid))
    assert deleted.group is not None
    assert deleted.group["customer_count"] == 100_000
    assert await pool.fetchval("SELECT count(*) FROM member_purges WHERE group_id = $1", gid) == 1
    assert await MemberPurger(pool).purge(5000) == 100_000
    assert await count_and_rows(pool, gid) == (100_000, 0)
    assert await pool.fetchval("SELECT count(*) FROM member_purges") == 0
