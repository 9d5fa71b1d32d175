"""The outbox relay against real PostgreSQL and Kafka: no skipped rows, one group's events in
order across relay instances, the same ce_id on re-publish, reconnects, metrics, pruning."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from pydantic import SecretStr

from service.adapters.kafka.clients import create_producer
from service.adapters.kafka.events import EventPublisher
from service.adapters.postgres import outbox_store
from service.adapters.postgres.db import create_pool
from service.adapters.postgres.outbox_store import PostgresOutbox
from service.config import Settings
from service.domain.model import Group, group_json
from service.observability import Metrics
from service.pruner import Pruner
from tests.e2e.http_support import TcpProxy
from tests.relay_support import (
    apply,
    assert_each_group_in_order,
    ce_id,
    create,
    first_copies,
    group_id,
    outbox_event_ids,
    rename,
    running_relay,
    wait_published,
    wait_until,
)
from tests.support import KafkaProbe, headers_of

# What a writer's transaction inserts; RETURNING shows the id it was handed before commit.
INSERT_OUTBOX_ROW = """
INSERT INTO outbox (event_type, organization_id, group_id, group_version, command_id,
                    payload, occurred_at)
VALUES ('group.created', $1, $2, 1, $3, $4::json, $5)
RETURNING id, event_id::text
"""


def sample_group(organization_id: str) -> Group:
    now = datetime.now(UTC)
    return Group(f"grp_{uuid.uuid4().hex}", organization_id, "Slow", None, None, 1, now, now)


def published_count(relay_metrics: Metrics) -> float:
    value = relay_metrics.registry.get_sample_value("customer_groups_events_published_total")
    return value or 0.0


async def test_a_row_committed_after_later_rows_is_still_published(
    settings: Settings, pool: asyncpg.Pool, kafka: KafkaProbe
) -> None:
    async with running_relay(settings), pool.acquire() as slow:
        transaction = slow.transaction()
        await transaction.start()
        group = sample_group("org_slow")
        held = await slow.fetchrow(
            INSERT_OUTBOX_ROW,
            group.organization_id,
            group.id,
            str(uuid.uuid4()),
            orjson.dumps(group_json(group)).decode(),
            group.created_at,
        )
        assert held is not None
        slow_id, slow_event_id = held["id"], held["event_id"]

        await apply(pool, *(create("org_fast") for _ in range(5)))
        later = await pool.fetch("SELECT id, event_id::text FROM outbox ORDER BY id")
        assert len(later) == 5
        assert all(row["id"] > slow_id for row in later)
        later_ids = {row["event_id"] for row in later}
        await kafka.wait_for(
            settings.topic_events, lambda records: later_ids <= {ce_id(r) for r in records}
        )
        await wait_published(pool)
        last_seen = max(row["id"] for row in later)

        await transaction.commit()
        # The trap this test is about: the late row sits below what was already published,
        # so a reader of `id > last_seen` would never see it.
        naive = await pool.fetch("SELECT id FROM outbox WHERE id > $1", last_seen)
        assert slow_id not in {row["id"] for row in naive}

        records = await kafka.wait_for(
            settings.topic_events, lambda records: slow_event_id in {ce_id(r) for r in records}
        )
        await wait_published(pool)
    assert {ce_id(r) for r in first_copies(records)} == later_ids | {slow_event_id}


async def test_two_relays_keep_each_groups_events_in_order(
    settings: Settings, pool: asyncpg.Pool, kafka: KafkaProbe
) -> None:
    relay_settings = settings.model_copy(update={"relay_batch_size": 7, "relay_lock_retry_s": 0.05})
    organizations = ("org_a", "org_b")
    created = await apply(pool, *(create(org) for org in organizations for _ in range(2)))
    groups = {
        org: [group_id(r) for r in created if r.organization_id == org] for org in organizations
    }
    rounds = 60

    async def write(organization_id: str) -> None:
        for _ in range(rounds):
            await apply(pool, *(rename(organization_id, g) for g in groups[organization_id]))

    async with running_relay(relay_settings) as one, running_relay(relay_settings) as two:
        both_led = False

        async def watch() -> None:
            nonlocal both_led
            while True:
                both_led = both_led or (one.relay.leading and two.relay.leading)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        await wait_until(lambda: one.relay.leading or two.relay.leading)
        leader, standby = (one, two) if one.relay.leading else (two, one)
        writers = [asyncio.create_task(write(org)) for org in organizations]
        await kafka.wait_events(60)
        leader.task.cancel()  # the active relay dies mid-stream; its connection drops the lock
        await wait_until(lambda: standby.relay.leading)
        await asyncio.gather(*writers)
        await wait_published(pool)
        expected = await outbox_event_ids(pool)
        await kafka.wait_for(
            settings.topic_events, lambda records: expected <= {ce_id(r) for r in records}
        )
        watcher.cancel()

    assert not both_led
    assert published_count(leader.metrics) > 0
    assert published_count(standby.metrics) > 0
    versions = assert_each_group_in_order(kafka.events())
    assert {ce_id(r) for r in kafka.events()} == expected
    assert sorted(versions) == sorted(g for ids in groups.values() for g in ids)
    assert all(len(v) == rounds + 1 for v in versions.values())


async def test_an_event_sent_but_not_marked_is_sent_again_with_the_same_ce_id(
    settings: Settings, pool: asyncpg.Pool, kafka: KafkaProbe
) -> None:
    created = await apply(pool, create("org_a"), create("org_a"))
    await apply(pool, *(rename("org_a", group_id(r)) for r in created))
    async with pool.acquire() as conn:
        rows = await outbox_store.LeaderSession(conn).unpublished(100)
    assert len(rows) == 4
    # A relay killed after Kafka's acknowledgement, before it could mark the rows published.
    producer = create_producer(settings)
    await producer.start()
    try:
        await EventPublisher(producer, settings).publish(rows)
    finally:
        await producer.stop()

    async with running_relay(settings):
        await wait_published(pool)
        records = await kafka.wait_events(2 * len(rows))

    assert len(records) == 2 * len(rows)
    unique = first_copies(records)  # asserts each copy is the same event
    assert {ce_id(r) for r in unique} == {row.event_id for row in rows}
    assert_each_group_in_order(records)


async def test_a_commit_made_while_the_relay_publishes_is_not_left_for_the_next_poll(
    settings: Settings, pool: asyncpg.Pool, kafka: KafkaProbe
) -> None:
    """The consumer wakes the relay after each commit. A wake-up that comes while the relay
    is busy must send it straight back to read; with polling this slow, a lost one would
    leave the row unpublished for half a minute."""
    settings = settings.model_copy(update={"relay_poll_min_s": 30.0, "relay_poll_max_s": 30.0})
    await apply(pool, create("org_a"))
    [first] = await outbox_event_ids(pool)
    async with pool.acquire() as blocker:
        blocking = blocker.transaction()
        await blocking.start()
        # The relay publishes the first row, then waits on this row lock to mark it.
        await blocker.execute("SELECT 1 FROM outbox FOR UPDATE")
        async with running_relay(settings) as running:
            await kafka.wait_for(settings.topic_events, lambda rs: first in {ce_id(r) for r in rs})
            await apply(pool, create("org_b"))
            running.relay.wakeup.set()
            [second] = await outbox_event_ids(pool) - {first}
            await blocking.commit()
            await kafka.wait_for(
                settings.topic_events, lambda rs: second in {ce_id(r) for r in rs}, timeout=10
            )


async def test_backlog_metrics_count_unpublished_rows_and_their_age(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await apply(pool, create("org_a"), create("org_a"), create("org_b"))
    await asyncio.sleep(0.3)
    rows, age, parked = await outbox_store.backlog(pool)
    assert (rows, parked) == (3, 0)
    assert age >= 0.3

    metrics = Metrics()
    pruner = Pruner(
        PostgresOutbox(pool), settings.model_copy(update={"prune_interval_s": 0.05}), metrics
    )
    pruning = asyncio.create_task(pruner.run())
    try:

        def gauge(name: str) -> float | None:
            return metrics.registry.get_sample_value(name)

        await wait_until(lambda: gauge("customer_groups_outbox_backlog") == 3)
        assert (gauge("customer_groups_outbox_oldest_age_seconds") or 0) >= 0.3

        async with running_relay(settings):
            await wait_published(pool)
        await wait_until(lambda: gauge("customer_groups_outbox_backlog") == 0)
        assert gauge("customer_groups_outbox_oldest_age_seconds") == 0
    finally:
        pruning.cancel()
        await asyncio.gather(pruning, return_exceptions=True)


async def test_relay_reconnects_after_losing_postgres(
    settings: Settings, pool: asyncpg.Pool, kafka: KafkaProbe
) -> None:
    url = urlsplit(settings.database_url.get_secret_value())
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    via_proxy = urlunsplit(
        url._replace(netloc=f"{url.username}:{url.password}@127.0.0.1:{proxy.port}")
    )
    relay_settings = settings.model_copy(update={"database_url": SecretStr(via_proxy)})
    try:
        async with running_relay(relay_settings) as running:
            await apply(pool, create("org_a"))
            await wait_published(pool)

            await proxy.cut()  # as a Postgres restart: connections drop, new ones are refused
            await apply(pool, create("org_a"), create("org_b"))
            await wait_until(lambda: "relay" in running.health.problems)
            await asyncio.sleep(0.5)
            assert (
                await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 2
            )

            await proxy.start()
            await wait_published(pool)
            records = await kafka.wait_events(3)
            await wait_until(lambda: "relay" not in running.health.problems)
    finally:
        await proxy.cut()
    assert {ce_id(r) for r in first_copies(records)} == await outbox_event_ids(pool)


async def test_pruner_deletes_only_rows_published_longer_ago_than_retention(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    created = await apply(pool, *(create("org_a") for _ in range(6)))
    ids = [r["id"] for r in await pool.fetch("SELECT id FROM outbox ORDER BY id")]
    old, published_lately, never_published, recent = ids[:3], ids[3], ids[4], ids[5]
    days = "now() - make_interval(days => $2)"
    await pool.execute(
        f"UPDATE outbox SET occurred_at = {days}, published_at = {days} WHERE id = ANY($1)",
        old,
        8,
    )
    await pool.execute(
        f"UPDATE outbox SET occurred_at = {days}, published_at = now() - interval '1 day'"
        " WHERE id = $1",
        published_lately,
        10,
    )
    await pool.execute(f"UPDATE outbox SET occurred_at = {days} WHERE id = $1", never_published, 8)
    await pool.execute("UPDATE outbox SET published_at = now() WHERE id = $1", recent)
    await pool.execute(
        "UPDATE processed_commands SET processed_at = now() - interval '8 days'"
        " WHERE command_id = $1",
        created[0].command_id,
    )

    pruner = Pruner(
        PostgresOutbox(pool), settings.model_copy(update={"prune_batch_size": 2}), Metrics()
    )
    assert await pruner.prune_once() == (3, 1)

    left = {r["id"] for r in await pool.fetch("SELECT id FROM outbox")}
    assert left == {published_lately, never_published, recent}
    assert await pool.fetchval("SELECT count(*) FROM processed_commands") == 5


async def test_under_an_external_publisher_the_pruner_deletes_rows_by_age(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    created = await apply(pool, *(create("org_a") for _ in range(7)))
    ids = [r["id"] for r in await pool.fetch("SELECT id FROM outbox ORDER BY id")]
    old, old_published, still_parked, released, recent = ids[:3], ids[3], ids[4], ids[5], ids[6]
    await pool.execute(
        "UPDATE outbox SET occurred_at = now() - interval '8 days' WHERE id = ANY($1)",
        [*old, old_published, still_parked, released],
    )
    await pool.execute("UPDATE outbox SET published_at = now() WHERE id = $1", old_published)
    await pool.execute(
        "UPDATE outbox SET parked_at = now(), parked_reason = 'too large' WHERE id = ANY($1)",
        [still_parked, released],
    )
    await pool.execute("UPDATE outbox SET published_at = now() WHERE id = $1", released)
    await pool.execute(
        "UPDATE processed_commands SET processed_at = now() - interval '8 days'"
        " WHERE command_id = $1",
        created[0].command_id,
    )

    external = settings.model_copy(update={"outbox_publisher": "external", "prune_batch_size": 2})
    outbox = PostgresOutbox(pool, published_externally=True)
    assert await Pruner(outbox, external, Metrics()).prune_once() == (5, 1)

    left = {r["id"] for r in await pool.fetch("SELECT id FROM outbox")}
    assert left == {still_parked, recent}
    assert await pool.fetchval("SELECT count(*) FROM processed_commands") == 6


async def test_the_leaders_session_settings_go_back_with_its_connection(
    settings: Settings,
) -> None:
    single = await create_pool(settings.model_copy(update={"database_pool_max": 1}), min_size=1)
    try:
        async with single.acquire() as conn:
            session = outbox_store.LeaderSession(conn)
            assert await session.try_lead()
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
            leader = await conn.fetchval("SELECT pg_backend_pid()")
            await session.hand_over(clean=True)
        async with single.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == leader
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
            assert await conn.fetchval("SHOW enable_seqscan") == "on"
    finally:
        await single.close()


async def test_the_leader_walks_the_unpublished_index_even_with_stale_statistics(
    pool: asyncpg.Pool,
) -> None:
    explain = "EXPLAIN " + outbox_store.SELECT_UNPUBLISHED.replace("$1", "2000")
    async with pool.acquire() as conn:
        backlog = conn.transaction()
        await backlog.start()
        try:
            # An outbox of this transaction's own (a temporary table comes first in the
            # search path), its statistics taken while nothing waited.
            await conn.execute("CREATE TEMPORARY TABLE outbox (LIKE public.outbox INCLUDING ALL)")
            await conn.execute("ANALYZE outbox")
            await conn.execute(
                """
                INSERT INTO outbox (event_type, organization_id, group_id, group_version,
                                    command_id, payload, occurred_at)
                SELECT 'group.created', 'org_stale', 'grp_' || i, 1, 'cmd_' || i,
                       '{"name": "a group of the backlog"}', now()
                FROM generate_series(1, 50000) AS i
                """
            )
            # The statistics say the backlog is small: a planner free to choose may gather
            # and sort it all (it did, before parked rows left the partial index).
            await conn.execute(outbox_store.LEADER_SETTINGS.replace("SET ", "SET LOCAL "))
            plan = "\n".join(r[0] for r in await conn.fetch(explain))
            assert "Index Scan using outbox_id_idx" in plan  # the partial index, copied
            assert "Index Scan" in plan
            assert "Sort" not in plan
        finally:
            await backlog.rollback()


async def test_a_leader_whose_session_is_cut_mid_stream_is_fenced_and_order_holds(
    settings: Settings, pool: asyncpg.Pool, kafka: KafkaProbe
) -> None:
    """The leader's backend is terminated while it publishes and a standby waits: the old
    leader stops at its next step, the standby waits out the old one's deliveries before it
    publishes, and every group's events stay in order; state records carry their version."""
    relay_settings = settings.model_copy(
        update={"relay_batch_size": 7, "relay_lock_retry_s": 0.05, "relay_delivery_timeout_s": 2}
    )
    created = await apply(pool, *(create("org_a") for _ in range(3)))
    groups = [group_id(r) for r in created]
    writing = True

    async def write() -> None:
        while writing:
            await apply(pool, *(rename("org_a", g) for g in groups))
            await asyncio.sleep(0.01)

    async with running_relay(relay_settings) as one, running_relay(relay_settings) as two:
        await wait_until(lambda: one.relay.leading or two.relay.leading)
        writer = asyncio.create_task(write())
        await kafka.wait_events(30)
        epoch = await pool.fetchval("SELECT epoch FROM relay_leader")
        terminated = await pool.fetchval(
            "SELECT pg_terminate_backend(pid) FROM pg_locks"
            " WHERE locktype = 'advisory' AND classid = 2 AND objid = 1 AND granted"
        )
        cut_at = asyncio.get_running_loop().time()
        assert terminated
        # Either relay may win the lock again; whichever does begins a new term.
        async with asyncio.timeout(30):
            while await pool.fetchval("SELECT epoch FROM relay_leader") == epoch:
                await asyncio.sleep(0.01)
        await wait_until(lambda: one.relay.leading or two.relay.leading)
        took_over_s = asyncio.get_running_loop().time() - cut_at
        await asyncio.sleep(0.5)
        writing = False
        await writer
        await wait_published(pool)
        expected = await outbox_event_ids(pool)
        await kafka.wait_for(
            settings.topic_events, lambda records: expected <= {ce_id(r) for r in records}
        )
        assert not (one.relay.leading and two.relay.leading)

    assert took_over_s >= relay_settings.relay_delivery_timeout_s
    assert await pool.fetchval("SELECT epoch FROM relay_leader") > epoch
    assert_each_group_in_order(kafka.events())
    state = kafka.records[settings.topic_state]
    assert state
    assert all(headers_of(r).get("ce_groupversion", "").isdigit() for r in state)
