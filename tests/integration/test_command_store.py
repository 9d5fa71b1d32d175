"""The command store against real PostgreSQL: what a batch writes, and who decides names."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from service.adapters.postgres import locks
from service.adapters.postgres.command_store import (
    LOAD_BATCH,
    NAME_INDEX,
    CommandStore,
    PostgresBatch,
    group_from_row,
)
from service.adapters.postgres.db import Connection, create_pool
from service.adapters.postgres.outbox_store import PostgresOutbox
from service.config import Settings
from service.domain.model import group_json, name_key
from service.domain.ports import AnyCommand
from service.domain.results import CommandResult
from service.handlers import Incoming, apply_commands
from service.observability import Metrics
from service.pruner import Pruner
from tests.unit.fakes import ORG, OTHER_ORG, create, delete, update

# What a session could carry from one use to the next: locks, settings changed from what a
# RESET would restore, open cursors (asyncpg's cache of prepared statements aside).
SESSION_STATE = """
SELECT jsonb_build_object(
    'locks', (SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'),
    'settings', (SELECT jsonb_object_agg(name, setting) FROM pg_settings
                 WHERE source = 'session' AND setting IS DISTINCT FROM reset_val),
    'cursors', (SELECT count(*) FROM pg_cursors)
)::text
"""

INSERT_GROUP = """
INSERT INTO customer_groups (id, organization_id, name, name_key, version, created_at,
                             updated_at)
VALUES ($1, $2, $3, $4, 1, now(), now())
"""


async def insert_group(
    conn: asyncpg.Pool | Connection, group_id: str, organization_id: str, name: str
) -> None:
    await conn.execute(INSERT_GROUP, group_id, organization_id, name, name_key(name))


async def apply(store: Any, *commands: AnyCommand) -> list[CommandResult]:
    return await apply_commands(store, [Incoming(c) for c in commands])


async def codes(store: Any, *commands: AnyCommand) -> list[int]:
    return [r.code for r in await apply(store, *commands)]


async def groups(pool: asyncpg.Pool) -> dict[str, asyncpg.Record]:
    return {r["id"]: r for r in await pool.fetch("SELECT * FROM customer_groups")}


async def outbox(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT *, payload::text AS body, event_id::text AS eid FROM outbox ORDER BY id"
    )


async def counts(pool: asyncpg.Pool) -> tuple[int, int, int]:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM customer_groups) AS g, (SELECT count(*) FROM outbox) AS o,"
        " (SELECT count(*) FROM processed_commands) AS p"
    )
    assert row is not None
    return row["g"], row["o"], row["p"]


@pytest.fixture
def store(pool: asyncpg.Pool) -> CommandStore:
    return CommandStore(pool)


async def test_a_batch_writes_groups_outbox_and_processed_rows(
    pool: asyncpg.Pool, store: CommandStore
) -> None:
    commands = [
        create("VIP", group_id="grp_vip", description="Old", platform_id="p1"),
        create("Gold", group_id="grp_gold"),
        update("grp_vip", name="Platinum", description=None, expected_version=1),
        update("grp_vip", name="Platinum"),
        delete("grp_gold", expected_version=1),
        create("gold", group_id="grp_gold2", organization_id=OTHER_ORG),
        update("grp_missing", name="x"),
    ]
    results = await apply(store, *commands)

    assert [r.code for r in results] == [201, 201, 200, 200, 200, 201, 404]
    rows = await groups(pool)
    assert set(rows) == {"grp_vip", "grp_gold", "grp_gold2"}
    vip = rows["grp_vip"]
    assert (vip["name"], vip["description"], vip["platform_id"], vip["version"]) == (
        "Platinum",
        None,
        "p1",
        2,
    )
    assert vip["deleted_at"] is None
    assert results[3].group == results[2].group
    gold = rows["grp_gold"]
    assert (gold["version"], gold["deleted_at"]) == (2, gold["updated_at"])
    assert results[4].group is not None
    assert results[4].group["deleted_at"] is not None

    events = await outbox(pool)
    assert [(e["group_id"], e["group_version"], e["event_type"]) for e in events] == [
        ("grp_vip", 1, "group.created"),
        ("grp_gold", 1, "group.created"),
        ("grp_vip", 2, "group.updated"),
        ("grp_gold", 2, "group.deleted"),
        ("grp_gold2", 1, "group.created"),
    ]
    assert len({e["eid"] for e in events}) == len(events)
    assert all(uuid.UUID(e["eid"]) for e in events)
    assert all(e["published_at"] is None for e in events)
    by_command = {c.command_id: (c, r) for c, r in zip(commands, results, strict=True)}
    for event in events:
        command, result = by_command[event["command_id"]]
        payload = json.loads(event["body"])
        assert result.group is not None
        assert {k: v for k, v in payload.items() if k != "previous"} == result.group
        assert event["organization_id"] == command.organization_id
        assert event["occurred_at"].isoformat() is not None
        assert event["occurred_at"] == datetime.strptime(
            result.group["updated_at"], "%Y-%m-%dT%H:%M:%S.%fZ"
        ).replace(tzinfo=UTC)
    assert json.loads(events[2]["body"])["previous"] == {"name": "VIP", "description": "Old"}

    processed = {
        r["command_id"]: r
        for r in await pool.fetch("SELECT *, result::text AS body FROM processed_commands")
    }
    assert set(processed) == {c.command_id for c in commands}
    for command, result in zip(commands, results, strict=True):
        row = processed[command.command_id]
        assert row["organization_id"] == command.organization_id
        assert row["fingerprint"] == command.fingerprint()
        assert json.loads(row["body"]) == result.to_json()


async def test_redelivered_commands_return_stored_results_and_write_nothing(
    pool: asyncpg.Pool, store: CommandStore
) -> None:
    commands = [
        create("VIP", group_id="grp_1"),
        update("grp_1", name="Gold"),
        update("grp_none", name="x"),
    ]
    first = await apply(store, *commands)
    before = (await groups(pool), await outbox(pool), await counts(pool))

    again = await apply(store, *commands)
    mixed = await apply(store, commands[1], create("Other"), commands[0])

    assert again == first
    assert (mixed[0], mixed[2]) == (first[1], first[0])
    assert mixed[1].code == 201
    assert first[0].group is not None
    assert first[0].group["version"] == 1
    after_rows = await groups(pool)
    assert after_rows["grp_1"] == before[0]["grp_1"]
    assert len(await outbox(pool)) == len(before[1]) + 1


async def test_a_reused_command_id_is_refused_and_leaves_the_stored_result(
    pool: asyncpg.Pool, store: CommandStore
) -> None:
    original = create("VIP")
    [stored] = await apply(store, original)
    reused = create("Gold").model_copy(update={"command_id": original.command_id})

    [result] = await apply(store, reused)

    assert (result.code, result.error) == (409, "Command id already used with a different payload")
    body = await pool.fetchval("SELECT result::text FROM processed_commands")
    assert json.loads(body) == stored.to_json()
    assert await counts(pool) == (1, 1, 1)


@pytest.mark.parametrize("variant", ["VIP", "vip", " Vip ", "vIP\t"])
async def test_names_conflict_whatever_their_case_and_surrounding_blanks(
    pool: asyncpg.Pool, store: CommandStore, variant: str
) -> None:
    assert await codes(store, create("VIP")) == [201]
    [result] = await apply(store, create(variant))
    assert result.to_json()["error"] == "Group with same name already exists"
    assert (result.code, result.details) == (409, {"name": variant.strip()})
    # Within one batch, and in another organization (free there).
    assert await codes(store, create("Gold"), create(" gOLD "), create(variant, OTHER_ORG)) == [
        201,
        409,
        201,
    ]
    assert await counts(pool) == (3, 3, 5)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("ΟΔΟΣ", "οδος"),
        ("οδος", "ΟΔΟΣ"),
        ("Straße", "STRASSE"),
        ("İ", "i\u0307"),
        ("Caf\u00e9", "CAFE\u0301"),
    ],
)
async def test_names_conflict_alike_in_one_batch_and_in_two(
    pool: asyncpg.Pool, store: CommandStore, first: str, second: str
) -> None:
    """The in-batch check and the index must agree, or a replay that batches commands
    differently from the first run reaches another outcome."""
    assert await codes(store, create(first), create(second)) == [201, 409]
    assert await codes(store, create(first, OTHER_ORG)) == [201]
    [result] = await apply(store, create(second, OTHER_ORG))
    assert (result.code, result.details) == (409, {"name": second})
    assert await counts(pool) == (2, 2, 4)


async def test_a_batch_holds_the_locks_other_writers_take(
    pool: asyncpg.Pool, store: CommandStore
) -> None:
    """The batch writes its organization ids into its first statement as literals; they must
    still name each organization's lock (locks.ORGANIZATIONS, hashtext(id)), or another
    writer would not wait for the batch. An id with a quote checks the quoting."""
    odd = create("Gold").model_copy(update={"organization_id": "o'brien"})

    async def free() -> list[bool]:
        rows = await pool.fetch(
            "SELECT pg_try_advisory_xact_lock($2, hashtext(o)) AS free"
            " FROM unnest($1::text[]) AS o",
            [ORG, "o'brien"],
            locks.ORGANIZATIONS,
        )
        return [r["free"] for r in rows]

    async with store.batch([create("VIP"), odd]):
        assert await free() == [False, False]
    assert await free() == [True, True]


async def test_batches_leave_their_connection_as_they_found_it(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """The consumer's pool sends no reset query on release, which is only right while a
    batch, applied or refused, leaves no transaction, lock or setting behind."""
    stateless = await create_pool(settings, min_size=1, max_size=1, stateless=True)
    try:
        async with stateless.acquire() as conn:
            before = await conn.fetchval(SESSION_STATE)
        store = CommandStore(stateless)
        assert await codes(store, create("VIP"), create("Gold")) == [201, 201]
        # Refused by the name index: a lone command, then a batch retried one by one.
        assert await codes(Interfering(pool, "grp_other", "silver", store), create("Silver")) == [
            409
        ]
        refused = Interfering(pool, "grp_another", "bronze", store)
        assert await codes(refused, create("Bronze"), create("Iron")) == [409, 201]
        async with stateless.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval(SESSION_STATE) == before
    finally:
        await stateless.close()


async def test_a_deleted_groups_name_is_free_again(pool: asyncpg.Pool, store: CommandStore) -> None:
    for round_ in range(3):
        [made] = await apply(store, create("VIP" if round_ % 2 else "vip"))
        assert made.group is not None
        assert await codes(store, delete(made.group["id"])) == [200]
    assert await codes(store, create(" Vip ")) == [201]
    live = await pool.fetch("SELECT name FROM customer_groups WHERE deleted_at IS NULL")
    assert [r["name"] for r in live] == ["Vip"]
    assert await pool.fetchval("SELECT count(*) FROM customer_groups") == 4


async def test_two_writers_racing_for_one_name_leave_exactly_one_winner(
    pool: asyncpg.Pool,
) -> None:
    for round_ in range(10):
        name = f"Race {round_}"
        results = await asyncio.gather(
            apply(CommandStore(pool), create(name)),
            apply(CommandStore(pool), create(f" {name.upper()} ")),
        )
        assert sorted(r.code for [r] in results) == [201, 409]
    assert await pool.fetchval("SELECT count(*) FROM customer_groups") == 10


async def test_the_unique_index_decides_between_two_concurrent_inserts(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as first, pool.acquire() as second:
        first_tx = first.transaction()
        await first_tx.start()
        await insert_group(first, "grp_a", ORG, "VIP")
        second_pid = second.get_server_pid()

        async def insert_second() -> None:
            async with second.transaction():
                await insert_group(second, "grp_b", ORG, "vip")

        racing = asyncio.create_task(insert_second())
        # The second insert waits on the first transaction's uncommitted index entry.
        for _ in range(200):
            waiting = await pool.fetchval(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", second_pid
            )
            if waiting == "Lock":
                break
            await asyncio.sleep(0.01)
        assert waiting == "Lock"
        assert not racing.done()
        await first_tx.commit()
        with pytest.raises(asyncpg.UniqueViolationError) as refused:
            await racing
    assert refused.value.constraint_name == NAME_INDEX
    assert [r["id"] for r in await pool.fetch("SELECT id FROM customer_groups")] == ["grp_a"]


async def test_the_index_ignores_deleted_rows_and_other_organizations(pool: asyncpg.Pool) -> None:
    await insert_group(pool, "grp_a", ORG, "VIP")
    await pool.execute("UPDATE customer_groups SET deleted_at = now() WHERE id = 'grp_a'")
    await insert_group(pool, "grp_b", ORG, "vip")
    await insert_group(pool, "grp_c", OTHER_ORG, "VIP")
    with pytest.raises(asyncpg.UniqueViolationError):
        await insert_group(pool, "grp_d", ORG, "Vip")
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute("UPDATE customer_groups SET deleted_at = NULL WHERE id = 'grp_a'")


class Interfering:
    """A CommandStore whose first batch, after loading, meets a row another writer committed.

    The other writer skips the organization lock, as a buggy tool or a manual fix would, so
    only the unique index stands between it and the batch."""

    def __init__(
        self, pool: asyncpg.Pool, group_id: str, name: str, store: CommandStore | None = None
    ) -> None:
        self._store = store or CommandStore(pool)
        self._pool = pool
        self._row: tuple[str, str, str] | None = (group_id, ORG, name)
        self.batches = 0

    @asynccontextmanager
    async def batch(self, commands: Sequence[AnyCommand]) -> AsyncIterator[PostgresBatch]:
        async with self._store.batch(commands) as batch:
            self.batches += 1
            if self._row is not None:
                await insert_group(self._pool, *self._row)
                self._row = None
            yield batch


async def test_a_lone_command_the_index_refuses_is_rejected_and_recorded(
    pool: asyncpg.Pool,
) -> None:
    store = Interfering(pool, "grp_other", "vip")
    command = create("VIP", group_id="grp_mine")

    [result] = await apply(store, command)

    assert (result.code, result.error, result.details) == (
        409,
        "Group with same name already exists",
        {"name": "VIP"},
    )
    assert list(await groups(pool)) == ["grp_other"]
    assert await outbox(pool) == []
    stored = await pool.fetchval(
        "SELECT result::text FROM processed_commands WHERE command_id = $1", command.command_id
    )
    assert json.loads(stored) == result.to_json()
    assert await apply(CommandStore(pool), command) == [result]


async def test_a_refused_rename_is_rejected_and_the_group_keeps_its_name(
    pool: asyncpg.Pool,
) -> None:
    assert await codes(CommandStore(pool), create("VIP", group_id="grp_mine")) == [201]
    store = Interfering(pool, "grp_other", "gold")

    [result] = await apply(store, update("grp_mine", name="Gold"))

    assert (result.code, result.details) == (409, {"name": "Gold"})
    row = (await groups(pool))["grp_mine"]
    assert (row["name"], row["version"]) == ("VIP", 1)
    assert len(await outbox(pool)) == 1


async def test_a_refused_batch_is_retried_one_command_at_a_time(pool: asyncpg.Pool) -> None:
    store = Interfering(pool, "grp_other", "vip")
    commands = [create("Gold"), create("VIP"), create("Silver"), update("grp_none", name="x")]

    results = await apply(store, *commands)

    assert [r.code for r in results] == [201, 409, 201, 404]
    assert [r.command_id for r in results] == [c.command_id for c in commands]
    assert store.batches == 1 + len(commands)
    names = sorted(r["name"] for r in (await groups(pool)).values())
    assert names == ["Gold", "Silver", "vip"]
    assert len(await outbox(pool)) == 2
    assert (await counts(pool))[2] == 4


async def test_a_refused_change_among_redeliveries_keeps_one_result_per_command(
    pool: asyncpg.Pool,
) -> None:
    earlier = [create("Gold"), create("Silver")]
    stored = await apply(CommandStore(pool), *earlier)
    store = Interfering(pool, "grp_other", "vip")
    fresh = create("VIP")

    results = await apply(store, earlier[0], fresh, earlier[1])

    assert [r.command_id for r in results] == [
        earlier[0].command_id,
        fresh.command_id,
        earlier[1].command_id,
    ]
    assert (results[0], results[2]) == (stored[0], stored[1])
    assert (results[1].code, results[1].details) == (409, {"name": "VIP"})


async def test_swapping_names_in_one_batch_falls_back_to_one_command_at_a_time(
    pool: asyncpg.Pool, store: CommandStore
) -> None:
    # One set-based UPDATE checks the index row by row, so a swap trips it mid-statement.
    assert await codes(store, create("X", group_id="grp_x"), create("Y", group_id="grp_y")) == [
        201,
        201,
    ]
    swap = [
        update("grp_x", name="tmp"),
        update("grp_y", name="X"),
        update("grp_x", name="Y"),
    ]
    assert await codes(store, *swap) == [200, 200, 200]
    rows = await groups(pool)
    assert (rows["grp_x"]["name"], rows["grp_x"]["version"]) == ("Y", 3)
    assert (rows["grp_y"]["name"], rows["grp_y"]["version"]) == ("X", 2)
    versions = [(e["group_id"], e["group_version"]) for e in await outbox(pool)]
    assert versions[2:] == [("grp_x", 2), ("grp_y", 2), ("grp_x", 3)]
    assert await codes(store, *swap) == [200, 200, 200]
    assert len(await outbox(pool)) == 5


async def test_pruning_drops_old_records_in_batches_and_keeps_unpublished_events(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    store = CommandStore(pool)
    results = await apply(store, *[create(f"G{n}") for n in range(7)])
    assert {r.code for r in results} == {201}
    ids = [r["id"] for r in await outbox(pool)]
    old, recent = ids[:5], ids[5:]
    await pool.execute(
        "UPDATE outbox SET occurred_at = now() - interval '3 days',"
        " published_at = now() - interval '3 days' WHERE id = ANY($1::bigint[])",
        old[:4],
    )
    await pool.execute(
        "UPDATE outbox SET occurred_at = now() - interval '3 days' WHERE id = $1", old[4]
    )
    await pool.execute(
        "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", recent
    )
    await pool.execute(
        "UPDATE processed_commands SET processed_at = now() - interval '3 days'"
        " WHERE command_id = ANY($1::text[])",
        [r.command_id for r in results[:5]],
    )
    tiny = settings.model_copy(
        update={
            "outbox_retention_days": 1.0,
            "processed_commands_retention_days": 2.0,
            "prune_batch_size": 2,
        }
    )

    assert await Pruner(PostgresOutbox(pool), tiny, Metrics()).prune_once() == (4, 5)

    assert [r["id"] for r in await outbox(pool)] == [old[4], *recent]
    left = {r["command_id"] for r in await pool.fetch("SELECT command_id FROM processed_commands")}
    assert left == {r.command_id for r in results[5:]}
    assert await Pruner(PostgresOutbox(pool), tiny, Metrics()).prune_once() == (0, 0)
    assert await pool.fetchval("SELECT count(*) FROM customer_groups") == 7


async def test_a_pruned_command_id_is_a_new_command_again(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    store = CommandStore(pool)
    command = create("VIP")
    [first] = await apply(store, command)
    await pool.execute("UPDATE processed_commands SET processed_at = now() - interval '8 days'")
    assert await Pruner(PostgresOutbox(pool), settings, Metrics()).prune_once() == (0, 1)
    [again] = await apply(store, command)
    assert (first.code, again.code) == (201, 409)
    assert again.error == "Group with same name already exists"


async def test_groups_read_back_as_they_were_written(
    pool: asyncpg.Pool, store: CommandStore
) -> None:
    [result] = await apply(store, create("Été 🎉", description="d" * 500, platform_id="p" * 255))
    [row] = (await groups(pool)).values()
    assert group_json(group_from_row(row)) == result.group


async def test_a_large_batch_still_probes_the_indexes(pool: asyncpg.Pool) -> None:
    keys = [f"k{n}" for n in range(500)]
    plan = "\n".join(
        r[0]
        for r in await pool.fetch(
            "EXPLAIN " + LOAD_BATCH,
            ["org_a"] * 500,
            keys,
            keys,
            ["org_a"] * 500,
            keys,
            ["org_a"] * 500,
            keys,
            keys,
        )
    )
    # A join here would read (hash, sort, spill) whole tables as they grow.
    assert "Hash" not in plan and "Merge" not in plan and "Seq Scan" not in plan, plan
    for index in (
        "processed_commands_pkey",
        "customer_groups_pkey",
        NAME_INDEX,
        "group_members",
    ):
        assert f"Index Scan using {index}" in plan, plan
