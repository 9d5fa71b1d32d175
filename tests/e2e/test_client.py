"""The Python client against the running service: commands with their results, and feeds
that end with exactly the database's groups (also across a killed relay and re-publishes)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import pytest
from customer_groups_client import (
    AddCustomers,
    Command,
    CreateGroup,
    DeleteGroup,
    Feed,
    GroupsClient,
    GroupView,
    Rejected,
    RemoveCustomers,
    UpdateGroup,
)

from service.bench.client import client_topics
from service.bootstrap import Container
from service.config import Settings
from service.ops.republish import EventFilter, republish

EXAMPLE = Path(__file__).parents[2] / "clients" / "python" / "examples" / "sqlite_projection.py"


@contextlib.asynccontextmanager
async def client_of(settings: Settings, **options: Any) -> AsyncIterator[GroupsClient]:
    prefix = settings.topic_commands.removesuffix(".commands")
    async with GroupsClient(
        settings.kafka_bootstrap_servers,
        reply_topic=f"{prefix}.replies",
        topics=client_topics(settings),
        **options,
    ) as client:
        yield client


def feed_of(settings: Settings, name: str, **options: Any) -> Feed:
    return Feed(
        settings.kafka_bootstrap_servers,
        group_id=f"{settings.kafka_consumer_group}-{name}",
        topics=client_topics(settings),
        commit_interval_s=0.2,
        **options,
    )


async def database_groups(pool: asyncpg.Pool) -> dict[str, tuple[int, int, str]]:
    rows = await pool.fetch(
        "SELECT id, version, customer_count, name FROM customer_groups WHERE deleted_at IS NULL"
    )
    return {r["id"]: (r["version"], r["customer_count"], r["name"]) for r in rows}


async def database_members(pool: asyncpg.Pool) -> dict[str, set[str]]:
    members: dict[str, set[str]] = {}
    for row in await pool.fetch("SELECT group_id, customer_id FROM group_members"):
        members.setdefault(row["group_id"], set()).add(row["customer_id"])
    return members


def view_groups(view: GroupView) -> dict[str, tuple[int, int, str]]:
    return {i: (g.version, g.customer_count, g.name) for i, g in view.groups.items()}


async def test_the_client_changes_groups_and_members_through_the_running_service(
    service: Container, settings: Settings, pool: asyncpg.Pool
) -> None:
    async with client_of(settings) as client:
        group = await client.create("org_a", "VIP", description="Big spenders")
        assert (group.version, group.customer_count, group.description) == (1, 0, "Big spenders")

        renamed = await client.update("org_a", group.id, name="VIPs", expected_version=1)
        assert (renamed.name, renamed.version, renamed.description) == ("VIPs", 2, "Big spenders")
        cleared = await client.update("org_a", group.id, description=None)
        assert (cleared.description, cleared.version) == (None, 3)

        added = await client.add_customers("org_a", group.id, ["cus_1", "cus_2", "cus_1"])
        assert (added.changed, added.unchanged, added.group.customer_count) == (2, 0, 2)
        removed = await client.remove_customers("org_a", group.id, ["cus_2", "cus_9"])
        assert (removed.changed, removed.unchanged, removed.group.customer_count) == (1, 1, 1)

        with pytest.raises(Rejected) as taken:
            await client.create("org_a", "vips")
        assert (taken.value.code, taken.value.error) == (409, "Group with same name already exists")
        with pytest.raises(Rejected) as stale:
            await client.update("org_a", group.id, name="Late", expected_version=1)
        assert stale.value.details == {"expected_version": 1, "current_version": 5}
        with pytest.raises(Rejected) as elsewhere:
            await client.delete("org_b", group.id)
        assert elsewhere.value.code == 404

        deleted = await client.delete("org_a", group.id)
        assert deleted.deleted_at is not None
        assert (deleted.version, deleted.customer_count) == (6, 1)

    row = await pool.fetchrow("SELECT version, deleted_at FROM customer_groups")
    assert row is not None
    assert row["version"] == 6
    assert row["deleted_at"] is not None


async def test_a_retry_after_a_timeout_sends_the_same_command_id_and_applies_once(
    service: Container, settings: Settings, pool: asyncpg.Pool
) -> None:
    # Far shorter than the service takes to answer: the command goes out several times.
    async with client_of(settings, timeout_s=0.002, attempts=2000) as client:
        group = await client.create("org_a", "Retried")
        assert group.version == 1
    sent = await pool.fetchval("SELECT count(*) FROM processed_commands")
    assert sent == 1
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
    results = await service_results(settings)
    assert results > 1, "the command was not sent again"


async def service_results(settings: Settings) -> int:
    """How many results the results topic holds (one per delivery of a command)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.topic_results,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        partitions = consumer.assignment() or set()
        while not partitions:
            await asyncio.sleep(0.05)
            partitions = consumer.assignment()
        ends = await consumer.end_offsets(list(partitions))
        return sum(ends.values())
    finally:
        await consumer.stop()


async def test_send_many_gathers_the_results_of_thousands_of_commands_in_their_order(
    service: Container, settings: Settings, pool: asyncpg.Pool
) -> None:
    commands: list[Command] = [
        CreateGroup(organization_id=f"org_{n % 7}", name=f"Group {n}") for n in range(2000)
    ]
    commands.append(CreateGroup(organization_id="org_0", name="Group 0"))  # a duplicate name
    async with client_of(settings) as client:
        results = await client.send_many(commands, window=500)
    assert [r.command_id for r in results] == [c.command_id for c in commands]
    assert sum(r.code == 201 for r in results) == 2000
    assert (results[-1].code, results[-1].error) == (409, "Group with same name already exists")
    assert await pool.fetchval("SELECT count(*) FROM customer_groups") == 2000


ORGS = [f"org_feed_{n}" for n in range(4)]


def workload(round_: int) -> Iterator[Command]:
    """Creates, renames, member changes and deletes over a few organizations."""
    for org in ORGS:
        for n in range(10):
            group_id = f"grp_{org}_{n}"
            if round_ == 0:
                yield CreateGroup(organization_id=org, group_id=group_id, name=f"G{n}")
            elif n % 5 == 4 and round_ == 3:
                yield DeleteGroup(organization_id=org, group_id=group_id)
            elif n % 5 == 4 and round_ > 3:
                continue
            elif round_ % 3 == 1:
                ids = [f"cus_{round_}_{k}" for k in range(n + 1)]
                yield AddCustomers(organization_id=org, group_id=group_id, customer_ids=ids)
            elif round_ % 3 == 2:
                ids = [f"cus_{round_ - 1}_{k}" for k in range(0, n + 1, 2)]
                yield RemoveCustomers(organization_id=org, group_id=group_id, customer_ids=ids)
            else:
                yield UpdateGroup(organization_id=org, group_id=group_id, name=f"G{n} r{round_}")


ROUNDS = 8


def start(settings: Settings, role: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.environment(), "LOG_LEVEL": "WARNING"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service.entrypoints.cli", "run", "--role", role],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()  # a service left running would go on using the machine
            process.wait(timeout=15)


async def follow(feed: Feed, view: GroupView) -> None:
    async for change in feed:
        view.apply(change)


def sqlite_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sqlite_projection", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_feeds_started_before_after_and_restarted_end_with_the_database_groups(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    log = tmp_path / "service.log"
    consumer = start(settings, "consumer", log)
    relay = start(settings, "relay", log)
    example = sqlite_example()
    database = tmp_path / "groups.db"
    topics = client_topics(settings)
    group = settings.kafka_consumer_group
    before, restarted = GroupView(members_kept=True), GroupView(members_kept=True)
    tasks: list[asyncio.Task[Any]] = []
    try:
        async with (
            client_of(settings) as client,
            feed_of(settings, "before") as first,
            feed_of(settings, "restarted") as second,
        ):
            tasks = [
                asyncio.create_task(follow(first, before)),
                asyncio.create_task(follow(second, restarted)),
                asyncio.create_task(
                    example.project(
                        settings.kafka_bootstrap_servers, database, f"{group}-sqlite", topics
                    )
                ),
            ]
            for round_ in range(ROUNDS):
                results = await client.send_many(workload(round_), window=1)
                assert all(r.accepted for r in results), [r for r in results if not r.accepted]
                if round_ == 2:
                    stop(relay, signal.SIGKILL)  # events sent but not marked go out again
                    relay = start(settings, "relay", log)
                if round_ == 4:
                    await cancel(tasks.pop())  # the SQLite projection, halfway
                    await cancel(tasks.pop())  # and the in-memory view
                    await second.close()
                    restarted = GroupView(members_kept=True)
            # The first events once more, with their ce_id, as an operator's replay sends
            # them: a feed that applied them again would go back to version 1.
            replayed = await republish(settings, EventFilter(ORGS, types=["group.created"]))
            assert replayed.published == len(ORGS) * 10
            async with (
                feed_of(settings, "restarted") as again,
                feed_of(settings, "after") as late,
            ):
                after = GroupView(members_kept=True)
                tasks += [
                    asyncio.create_task(follow(again, restarted)),
                    asyncio.create_task(follow(late, after)),
                    asyncio.create_task(
                        example.project(
                            settings.kafka_bootstrap_servers, database, f"{group}-sqlite", topics
                        )
                    ),
                ]
                expected = await database_groups(pool)
                await until_equal(expected, before, restarted, after, database)
                members = await database_members(pool)
                actual = {g: members.get(g, set()) for g in expected}
                assert {g: before.members[g] for g in expected} == actual
                # Bootstrapped from counts: a member set is unknown, or right.
                for name, view in (("restarted", restarted), ("after", after)):
                    known = {g: m for g, m in view.members.items() if m is not None}
                    assert known == {g: actual[g] for g in known}, name
                assert not first.skipped
                assert not late.skipped
                for task in tasks:  # while their feeds still run
                    await cancel(task)
    finally:
        stop(consumer)
        stop(relay)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert len(expected) == len(ORGS) * 8


def sqlite_groups(path: Path) -> dict[str, tuple[int, int, str]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT id, version, customer_count, name FROM customer_groups WHERE deleted = 0"
        )
        return {row[0]: (row[1], row[2], row[3]) for row in rows}


async def until_equal(
    expected: dict[str, tuple[int, int, str]], *views: GroupView | Path, seconds: float = 60
) -> None:
    def seen() -> list[dict[str, tuple[int, int, str]]]:
        return [
            sqlite_groups(view) if isinstance(view, Path) else view_groups(view) for view in views
        ]

    deadline = asyncio.get_running_loop().time() + seconds
    while any(found != expected for found in seen()):
        if asyncio.get_running_loop().time() > deadline:
            assert seen() == [expected] * len(views)
        await asyncio.sleep(0.1)
