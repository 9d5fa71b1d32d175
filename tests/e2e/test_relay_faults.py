"""The relay through real failures: a Kafka broker down for 20 s, a relay process killed with
SIGKILL in the middle of a batch. Nothing is lost; a repeat carries the same ce_id."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from service.adapters.kafka import Record
from service.adapters.kafka.topics import ensure_topics
from service.adapters.postgres import outbox_store
from service.bootstrap import Role, lifespan
from service.config import Settings
from tests.kafka_node import KafkaNode, die_with_parent
from tests.relay_support import (
    Downstream,
    apply,
    assert_each_group_in_order,
    ce_id,
    create,
    first_copies,
    group_id,
    outbox_event_ids,
    rename,
    wait_published,
    wait_until,
)
from tests.support import KafkaProbe

OUTAGE_S = 20


async def read_events(settings: Settings, expected: set[str]) -> list[Record]:
    """Everything on the events topic, once every expected ce_id is there."""
    probe = KafkaProbe(settings)
    await probe.start()
    try:
        return list(
            await probe.wait_for(
                settings.topic_events,
                lambda records: expected <= {ce_id(r) for r in records},
                timeout=60,
            )
        )
    finally:
        await probe.stop()


async def test_kafka_down_for_20s_loses_nothing(
    settings: Settings, pool: asyncpg.Pool, private_kafka: KafkaNode
) -> None:
    settings = settings.model_copy(
        update={"kafka_bootstrap_servers": private_kafka.bootstrap, "relay_ack_timeout_s": 0.5}
    )
    await ensure_topics(settings)
    organizations = ("org_a", "org_b")
    created = await apply(pool, *(create(org) for org in organizations for _ in range(2)))
    rounds = 0

    async with lifespan(settings, frozenset({Role.RELAY})) as service:
        relay = service.relay
        assert relay is not None

        async def write() -> None:
            nonlocal rounds
            while True:
                await apply(pool, *(rename(r.organization_id, group_id(r)) for r in created))
                rounds += 1
                relay.wakeup.set()
                await asyncio.sleep(0.05)

        writer = asyncio.create_task(write())
        try:
            await wait_until(lambda: rounds >= 10)
            await wait_published(pool)

            private_kafka.kill()
            down_at = asyncio.get_running_loop().time()
            try:
                await wait_until(lambda: "relay" in service.health.problems, seconds=10)
                await asyncio.sleep(OUTAGE_S - (asyncio.get_running_loop().time() - down_at))
                waiting = (await outbox_store.backlog(pool)).rows
                assert waiting > 0
                assert "relay" in service.health.problems
            finally:
                # Also when failing: shutting the producer down waits for Kafka to take its sends.
                private_kafka.start()
                await private_kafka.wait_ready()
            await wait_until(lambda: "relay" not in service.health.problems, seconds=60)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        await wait_published(pool, seconds=60)

    expected = await outbox_event_ids(pool)
    events = await read_events(settings, expected)
    versions = assert_each_group_in_order(events)
    assert {ce_id(r) for r in events} == expected
    assert sorted(versions) == sorted(group_id(r) for r in created)
    # The writer can be cancelled after a commit it had not counted yet: the table decides.
    stored = {
        r["id"]: r["version"] for r in await pool.fetch("SELECT id, version FROM customer_groups")
    }
    assert {g: len(v) for g, v in versions.items()} == {g: stored[g] for g in versions}
    assert all(stored[g] >= rounds + 1 for g in versions)


# Groups' versions in id order, as writers that hold each organization's lock produce them.
FILL_OUTBOX = """
INSERT INTO outbox (event_type, organization_id, group_id, group_version, command_id,
                    payload, occurred_at)
SELECT CASE WHEN v = 1 THEN 'group.created' ELSE 'group.updated' END, 'org_k', 'grp_k' || g,
       v, 'cmd-' || g || '-' || v,
       json_build_object('id', 'grp_k' || g, 'organization_id', 'org_k',
                         'name', 'Group ' || g || ' v' || v, 'version', v),
       now()
FROM generate_series(1, $2) AS v, generate_series(1, $1) AS g
ORDER BY v, g
"""


BLOCKED_BY = "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))"


@pytest.fixture
def relay_process() -> Iterator[list[subprocess.Popen[bytes]]]:
    """`customer-groups run --role relay` processes started by the test, killed at its end."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def start_relay(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **settings.environment(),
        "HTTP_PORT": "0",
        "RELAY_BATCH_SIZE": "100",
        "LOG_LEVEL": "WARNING",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            die_with_parent(
                [sys.executable, "-m", "service.entrypoints.cli", "run", "--role", "relay"]
            ),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_relay_killed_mid_batch_loses_nothing_and_repeats_only_same_ce_ids(
    settings: Settings,
    pool: asyncpg.Pool,
    kafka: KafkaProbe,
    relay_process: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    groups, versions = 20, 150
    await pool.execute(FILL_OUTBOX, groups, versions)
    total = groups * versions
    log = tmp_path / "relay.log"

    async with pool.acquire() as blocker, blocker.transaction():
        # The relay publishes the batch holding this row, then waits for the row's lock to
        # mark it published: killed there, it has sent events it has no record of sending.
        # (Killing it once a count of rows was published raced it: it could publish all
        # 3,000 before the kill landed.)
        await blocker.execute(
            "SELECT FROM outbox WHERE id = (SELECT min(id) FROM outbox) + $1 FOR UPDATE",
            total // 3,
        )
        blocker_pid = await blocker.fetchval("SELECT pg_backend_pid()")
        first = start_relay(settings, log)
        relay_process.append(first)
        deadline = asyncio.get_running_loop().time() + 60
        while not (marking := await pool.fetchval(BLOCKED_BY, blocker_pid)):
            assert first.poll() is None, log.read_text()
            assert asyncio.get_running_loop().time() < deadline, log.read_text()
            await asyncio.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait()
        # A backend waiting for a lock does not notice its client is gone: released, it
        # would still mark the batch. Ended here, as a crash of the whole host would.
        assert await pool.fetchval("SELECT pg_terminate_backend($1, 10000)", marking)
    left = await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    assert 0 < left < total

    second = start_relay(settings, log)
    relay_process.append(second)
    await wait_published(pool, seconds=60)
    second.send_signal(signal.SIGTERM)

    expected = await outbox_event_ids(pool)
    events = await kafka.wait_for(
        settings.topic_events, lambda records: expected <= {ce_id(r) for r in records}, 60
    )
    unique = first_copies(events)  # asserts every repeat is the same event
    assert {ce_id(r) for r in unique} == expected
    assert len(events) > total, "the batch the first relay never marked was not sent again"
    per_group = assert_each_group_in_order(events)
    assert len(per_group) == groups
    assert all(len(v) == versions for v in per_group.values())
    downstream = Downstream()
    downstream.consume(events)
    assert Counter(downstream.applied) == Counter(
        (f"grp_k{g}", v) for g in range(1, groups + 1) for v in range(1, versions + 1)
    )
    # uvicorn re-raises the SIGTERM it handled, once it has shut down cleanly.
    assert second.wait(timeout=30) in (0, -signal.SIGTERM)
