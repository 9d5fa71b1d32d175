"""Replaying the command topic: one-off alongside the service, and by resetting its offsets."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.adapters.kafka.clients import client_options
from service.bootstrap import Container, lifespan
from service.config import Settings
from service.ops.common import OpsError
from service.ops.replay import Start, replay_oneoff
from service.ops.replay_reset import reset_offsets
from tests.support import KafkaProbe, command, wait_until_assigned


async def database_state(pool: asyncpg.Pool) -> dict[str, Any]:
    return {
        "groups": [dict(r) for r in await pool.fetch("SELECT * FROM customer_groups ORDER BY id")],
        "outbox": [
            (r["id"], r["published_at"] is not None)
            for r in await pool.fetch("SELECT id, published_at FROM outbox ORDER BY id")
        ],
        "processed": [
            dict(r)
            for r in await pool.fetch(
                "SELECT organization_id, command_id, result::text, processed_at"
                " FROM processed_commands ORDER BY organization_id, command_id"
            )
        ],
    }


async def history(kafka: KafkaProbe) -> dict[str, int]:
    """Commands of every kind: accepted, rejected by a rule, rejected at validation, malformed."""
    made = await kafka.ask(command(name="Gold"))
    group_id = made["group"]["id"]
    assert (await kafka.ask(command("group.update", group_id=group_id, name="Platinum")))[
        "code"
    ] == 200
    assert (await kafka.ask(command(name="platinum")))["code"] == 409
    assert (await kafka.ask(command("group.delete", group_id=group_id)))["code"] == 200
    assert (await kafka.ask(command(organization_id="org_b", name="Silver")))["code"] == 201
    assert (await kafka.ask(command(name="   ")))["code"] == 422
    await kafka.send(b"not json", key=b"org_a")
    await kafka.wait_for(kafka.settings.topic_dlq, lambda r: len(r) == 1)
    await kafka.wait_events(4)
    return {"stored": 5, "validation": 1, "malformed": 1}


async def committed(settings: Settings) -> dict[int, int]:
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=settings.kafka_consumer_group)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic_commands, p) for p in range(3)]
        found = {tp.partition: await consumer.committed(tp) for tp in tps}
        return {p: offset for p, offset in found.items() if offset is not None}
    finally:
        await consumer.stop()


async def all_consumed(settings: Settings) -> None:
    """A one-off replay stops at the service's committed offsets, which follow its results."""
    probe = AIOKafkaConsumer(**client_options(settings), group_id=None)
    await probe.start()
    try:
        tps = [TopicPartition(settings.topic_commands, p) for p in range(3)]
        ends = {tp.partition: end for tp, end in (await probe.end_offsets(tps)).items() if end}
    finally:
        await probe.stop()
    for _ in range(150):
        # An empty partition has 0 committed too: where the service chose to start.
        if {p: at for p, at in (await committed(settings)).items() if at} == ends:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the service did not commit up to {ends}")


async def settle(kafka: KafkaProbe) -> dict[str, int]:
    """Message counts per topic once the service has had time to send anything pending."""
    await asyncio.sleep(0.3)
    return {topic: len(records) for topic, records in kafka.records.items()}


async def test_oneoff_replay_of_the_whole_topic_changes_and_emits_nothing(
    service: Container, kafka: KafkaProbe, pool: asyncpg.Pool, settings: Settings
) -> None:
    kinds = await history(kafka)
    await all_consumed(settings)
    before = await database_state(pool)
    seen = await settle(kafka)

    dry = await replay_oneoff(settings, Start(), dry_run=True)
    assert (dry.tally.records, dry.tally.already_done, dry.tally.pending) == (7, 5, 1)
    by_offset = await replay_oneoff(settings, Start(offsets={0: 0, 1: 0, 2: 0}), dry_run=True)
    assert by_offset.tally.records == 7
    past_the_end = await replay_oneoff(settings, Start(offsets={0: 10_000}), dry_run=True)
    assert past_the_end.tally.records == 0
    with pytest.raises(OpsError, match="has no partition 9"):
        await replay_oneoff(settings, Start(offsets={9: 0}), dry_run=True)
    assert await settle(kafka) == seen

    outcome = await replay_oneoff(settings, Start())
    tally = outcome.tally
    assert tally.records == sum(kinds.values())
    assert (tally.already_done, tally.reapplied, tally.rejected, tally.invalid, tally.failed) == (
        kinds["stored"],
        0,
        kinds["validation"],
        kinds["malformed"],
        0,
    )
    assert await database_state(pool) == before
    after = await settle(kafka)
    assert after[settings.topic_events] == seen[settings.topic_events]
    assert after[settings.topic_state] == seen[settings.topic_state]
    assert after[settings.topic_dlq] == seen[settings.topic_dlq]
    # The contract: a redelivered command gets its stored result again, unchanged.
    results = [json.dumps(r, sort_keys=True) for r in kafka.results()]
    first = kinds["stored"] + kinds["validation"]
    assert len(results) == 2 * first
    assert sorted(results[first:]) == sorted(results[:first])


async def test_oneoff_replay_applies_what_was_never_applied(
    service: Container, kafka: KafkaProbe, pool: asyncpg.Pool, settings: Settings
) -> None:
    """A command the service skipped (here: its processed record is gone with its group)."""
    await kafka.ask(command(name="Lost"))
    await kafka.wait_events(1)
    await all_consumed(settings)
    await pool.execute("TRUNCATE customer_groups, outbox, processed_commands")

    outcome = await replay_oneoff(settings, Start(since=None))
    assert (outcome.tally.reapplied, outcome.tally.already_done) == (1, 0)
    row = await pool.fetchrow("SELECT name, version FROM customer_groups")
    assert row is not None
    assert (row["name"], row["version"]) == ("Lost", 1)
    [_, event] = await kafka.wait_events(2)
    assert json.loads(event.value)["name"] == "Lost"


async def test_oneoff_replay_leaves_what_the_service_has_not_consumed_to_it(
    kafka: KafkaProbe, settings: Settings, pool: asyncpg.Pool
) -> None:
    """Applied here first, a command would overtake those ahead of it in its partition."""
    await kafka.send(command(name="Pending"))
    outcome = await replay_oneoff(settings, Start())
    assert (outcome.tally.records, outcome.left_to_service) == (0, 1)
    assert await pool.fetchval("SELECT count(*) FROM customer_groups") == 0


async def test_replay_refuses_commands_older_than_the_processed_records(
    service: Container, kafka: KafkaProbe, settings: Settings
) -> None:
    await kafka.ask(command(name="Old"))
    await all_consumed(settings)
    await asyncio.sleep(1.2)
    short = settings.model_copy(update={"processed_commands_retention_days": 1 / 86400})
    with pytest.raises(OpsError, match=r"1 command\(s\) in this range are older") as refused:
        await replay_oneoff(short, Start(), dry_run=True)
    assert "--since" in str(refused.value)
    with pytest.raises(OpsError):
        await reset_offsets(short, Start(), dry_run=True)
    allowed = await replay_oneoff(short, Start(), dry_run=True, beyond_retention=True)
    assert (allowed.tally.records, allowed.tally.already_done) == (1, 1)


async def test_reset_refuses_an_active_group_then_rewinds_a_stopped_one(
    kafka: KafkaProbe, pool: asyncpg.Pool, settings: Settings
) -> None:
    async with lifespan(settings) as container:
        await wait_until_assigned(container)
        await kafka.ask(command(name="One"))
        await kafka.ask(command(name="Two"))
        await kafka.ask(command(organization_id="org_b", name="Three"))
        with pytest.raises(OpsError, match="active member"):
            await reset_offsets(settings, Start())
        await kafka.wait_events(3)
    before = await database_state(pool)
    consumed = await committed(settings)
    assert sum(consumed.values()) == 3

    plan = await reset_offsets(settings, Start(), dry_run=True)
    assert (plan.replayed, plan.members) == (3, [])
    assert await committed(settings) == consumed

    done = await reset_offsets(settings, Start())
    assert done.replayed == 3
    assert await committed(settings) == dict.fromkeys(consumed, 0)
    again = await reset_offsets(settings, Start())
    assert again.replayed == 0

    async with lifespan(settings) as container:
        await wait_until_assigned(container)
        await kafka.wait_for(settings.topic_results, lambda r: len(r) == 6)
        await asyncio.sleep(0.5)
    assert await database_state(pool) == before
    assert len(kafka.events()) == 3
    assert await committed(settings) == consumed
