"""Re-publishing stored events: exactly the matching ones, with their original ce_id."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.adapters.kafka import Record
from service.adapters.kafka.clients import client_options
from service.bootstrap import Container
from service.config import Settings
from service.ops.common import OpsError, parse_time
from service.ops.republish import EventFilter, republish
from tests.support import KafkaProbe, command, headers_of


async def new_topic(settings: Settings, compact: bool = False) -> str:
    name = f"{settings.topic_events}.{uuid.uuid4().hex[:6]}"
    configs = {"cleanup.policy": "compact"} if compact else {}
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 3, 1, topic_configs=configs)])
    finally:
        await admin.close()
    return name


def as_published(record: Record) -> tuple[bytes | None, bytes | None, dict[str, str]]:
    """What a downstream consumer relies on; FastStream's own correlation_id is not part of it."""
    headers = headers_of(record)
    headers.pop("correlation_id", None)
    return record.key, record.value, headers


def by_ce_id(records: list[Record]) -> dict[str, tuple[bytes | None, bytes | None, dict[str, str]]]:
    return {headers_of(r)["ce_id"]: as_published(r) for r in records}


async def history(kafka: KafkaProbe) -> list[Record]:
    a = (await kafka.ask(command(name="A1")))["group"]
    await kafka.ask(command(name="A2"))
    b = (await kafka.ask(command(organization_id="org_b", name="B1")))["group"]
    await kafka.ask(command("group.update", group_id=a["id"], description="changed"))
    await kafka.ask(command("group.delete", organization_id="org_b", group_id=b["id"]))
    return list(await kafka.wait_events(5))


async def test_republish_by_organization_sends_exactly_its_events_unchanged(
    service: Container, kafka: KafkaProbe, settings: Settings
) -> None:
    originals = await history(kafka)
    target = await new_topic(settings)
    reader = KafkaProbe(settings)
    await reader.start(target)
    try:
        dry = await republish(
            settings, EventFilter(organizations=["org_a"]), to_topic=target, dry_run=True
        )
        assert (dry.matched, dry.published) == (3, 0)
        assert dry.by_type == {"group.created": 2, "group.updated": 1}

        outcome = await republish(settings, EventFilter(organizations=["org_a"]), to_topic=target)
        assert (outcome.matched, outcome.published) == (3, 3)
        copies = await reader.wait_for(target, lambda r: len(r) >= 3)
        await asyncio.sleep(0.3)
        assert len(reader.records[target]) == 3
        expected = [r for r in originals if headers_of(r)["ce_organizationid"] == "org_a"]
        assert by_ce_id(copies) == by_ce_id(expected)

        await republish(
            settings, EventFilter(organizations=["org_b"], types=["group.deleted"]), to_topic=target
        )
        await reader.wait_for(target, lambda r: len(r) >= 4)
        [deleted] = [r for r in originals if headers_of(r)["ce_type"] == "group.deleted"]
        assert by_ce_id(reader.records[target][3:]) == by_ce_id([deleted])
    finally:
        await reader.stop()


async def test_republish_a_time_window_to_the_events_topic(
    service: Container, kafka: KafkaProbe, settings: Settings
) -> None:
    await kafka.ask(command(name="Before"))
    since = datetime.now(UTC)
    await asyncio.sleep(0.02)
    inside = (await kafka.ask(command(name="Inside")))["group"]
    await kafka.ask(command("group.update", group_id=inside["id"], name="Inside 2"))
    await asyncio.sleep(0.02)
    until = datetime.now(UTC)
    await kafka.ask(command(name="After"))
    originals = list(await kafka.wait_events(4))

    outcome = await republish(settings, EventFilter(since=since, until=until))
    assert outcome.published == 2
    await kafka.wait_events(6)
    await asyncio.sleep(0.3)
    events = kafka.events()
    assert len(events) == 6
    expected = [r for r in originals if headers_of(r)["ce_subject"] == inside["id"]]
    assert len(expected) == 2
    assert by_ce_id(events[4:]) == by_ce_id(expected)


async def test_republish_refuses_a_range_beyond_retention_but_not_the_retention_itself(
    settings: Settings, kafka: KafkaProbe, service: Container
) -> None:
    await kafka.ask(command(name="Kept"))
    await kafka.wait_events(1)
    with pytest.raises(OpsError, match=r"oldest stored event is from \d{4}-") as refused:
        await republish(settings, EventFilter(since=datetime.now(UTC) - timedelta(days=8)))
    assert "--since" in str(refused.value)
    retention = parse_time(f"{settings.outbox_retention_days:g}d")
    await republish(settings, EventFilter(since=retention), dry_run=True)
    with pytest.raises(OpsError, match="does not exist"):
        await republish(settings, EventFilter(), to_topic=f"{settings.topic_events}.missing")
    await asyncio.sleep(0.3)
    assert len(kafka.events()) == 1
