"""Rebuilding the compacted state topic: reading it back yields exactly the live groups."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.adapters.kafka import Record
from service.adapters.kafka.clients import client_options
from service.adapters.postgres.command_store import group_from_row
from service.bootstrap import Container
from service.config import Settings
from service.domain.model import group_json
from service.ops import state
from service.ops.state import rebuild_state
from tests.support import KafkaProbe, command, headers_of


async def compacted_topic(settings: Settings) -> str:
    name = f"{settings.topic_state}.{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, 3, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        await admin.close()
    return name


def fold(records: list[Record]) -> dict[str, Any]:
    """What a consumer bootstrapping from the topic ends with: the last value per key."""
    state: dict[str, Any] = {}
    for record in records:
        assert record.key is not None
        key = record.key.decode()
        if record.value is None:
            state.pop(key, None)
        else:
            state[key] = json.loads(record.value)
    return state


async def live_groups(pool: asyncpg.Pool, organization: str | None = None) -> dict[str, Any]:
    rows = await pool.fetch("SELECT * FROM customer_groups WHERE deleted_at IS NULL")
    groups = [group_from_row(row) for row in rows]
    return {g.id: group_json(g) for g in groups if organization in (None, g.organization_id)}


async def test_rebuild_state_then_reading_the_topic_yields_the_live_groups(
    service: Container, kafka: KafkaProbe, pool: asyncpg.Pool, settings: Settings
) -> None:
    a = (await kafka.ask(command(name="A1")))["group"]
    await kafka.ask(command(name="A2"))
    b = (await kafka.ask(command(organization_id="org_b", name="B1")))["group"]
    await kafka.ask(command(organization_id="org_b", name="B2"))
    await kafka.ask(command("group.update", group_id=a["id"], name="A1 renamed"))
    await kafka.ask(command("group.delete", organization_id="org_b", group_id=b["id"]))
    await kafka.wait_events(6)
    everything, only_b = await compacted_topic(settings), await compacted_topic(settings)
    reader = KafkaProbe(settings)
    await reader.start(everything, only_b)
    try:
        dry = await rebuild_state(settings, to_topic=everything, dry_run=True)
        assert (dry.live, dry.tombstones, dry.published) == (3, 1, 0)

        outcome = await rebuild_state(settings, to_topic=everything)
        assert (outcome.live, outcome.tombstones, outcome.published) == (3, 1, 4)
        records = await reader.wait_for(everything, lambda r: len(r) >= 4)
        assert fold(records) == await live_groups(pool)
        assert len(fold(records)) == 3
        [tombstone] = [r for r in records if r.value is None]
        assert tombstone.key == b["id"].encode()
        # Each carries its version, as the relay's do: a feed keeps the highest.
        assert headers_of(tombstone)["ce_groupversion"] == "2"
        for record in records:
            if record.value is not None:
                version = json.loads(record.value)["version"]
                assert headers_of(record)["ce_groupversion"] == str(version)

        await rebuild_state(settings, organizations=["org_b"], to_topic=only_b)
        records = await reader.wait_for(only_b, lambda r: len(r) >= 2)
        assert fold(records) == await live_groups(pool, "org_b")
        await asyncio.sleep(0.3)
        assert len(reader.records[everything]) == 4
        assert len(reader.records[only_b]) == 2
    finally:
        await reader.stop()


async def test_rebuild_of_the_service_state_topic_while_it_runs(
    service: Container, kafka: KafkaProbe, pool: asyncpg.Pool, settings: Settings
) -> None:
    """Twice, with the relay writing the same topic: the topic still folds to the live groups."""
    made = [(await kafka.ask(command(name=f"G{i}")))["group"] for i in range(3)]
    await kafka.ask(command("group.delete", group_id=made[0]["id"]))
    await kafka.wait_events(4)
    first = await rebuild_state(settings)
    second = await rebuild_state(settings)
    assert first.published == second.published == 3
    state = settings.topic_state
    await kafka.wait_for(state, lambda r: len(r) >= 4 + 2 * 3)
    assert fold(kafka.records[state]) == await live_groups(pool)


async def test_a_group_changing_during_the_rebuild_ends_current(
    service: Container,
    kafka: KafkaProbe,
    pool: asyncpg.Pool,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relay publishes a newer version before the rebuild's older snapshot lands."""
    group = (await kafka.ask(command(name="Before")))["group"]
    await kafka.wait_events(1)
    publish = state._publish
    changed = asyncio.Event()

    async def change_then_publish(broker: Any, topic: str, groups: Any) -> None:
        if not changed.is_set():
            changed.set()
            await kafka.ask(command("group.update", group_id=group["id"], name="During"))
            await kafka.wait_events(2)
        await publish(broker, topic, groups)

    monkeypatch.setattr(state, "_publish", change_then_publish)
    outcome = await state.rebuild_state(settings)
    assert (outcome.published, outcome.caught_up) == (1, 1)
    records = await kafka.wait_for(settings.topic_state, lambda r: len(r) >= 4)
    assert [json.loads(r.value)["name"] for r in records if r.value] == [
        "Before",
        "During",
        "Before",
        "During",
    ]
    assert fold(records) == await live_groups(pool)
