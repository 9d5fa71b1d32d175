"""How the command consumer starts: on topics that do not exist yet, and on partitions with
no committed offset, whose oldest commands may have been applied and forgotten."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from service.adapters.kafka.clients import client_options
from service.bootstrap import lifespan
from service.config import Settings
from tests.conftest import make_settings
from tests.kafka_node import KafkaNode
from tests.support import KafkaProbe, command

# Well under the 5 minutes a consumer assigned no partitions waits for its next metadata.
FIRST_RESULT_S = 20
RETENTION_DAYS = 1 / 24
HOURS_AGO_2_MS = 2 * 3600 * 1000


async def delete_topics(settings: Settings, prefix: str) -> None:
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        existing = [t for t in await admin.list_topics() if t.startswith(f"{prefix}.")]
        if existing:
            await admin.delete_topics(existing)
    finally:
        await admin.close()


@pytest.fixture
async def fresh_settings(endpoints: tuple[str, str], test_database: str) -> AsyncIterator[Settings]:
    """Settings whose topics do not exist yet; deleted afterwards, as `settings` does."""
    _, kafka = endpoints
    prefix = f"t{uuid.uuid4().hex[:8]}"
    value = make_settings(test_database, kafka, prefix)
    yield value
    await delete_topics(value, prefix)


async def first_result(settings: Settings) -> dict[str, Any]:
    """Start the service on topics it creates, then ask it one command."""
    async with lifespan(settings):
        probe = KafkaProbe(settings)
        await probe.start()
        try:
            body = command(name=f"First {uuid.uuid4().hex[:6]}")
            await probe.send(body)
            return await probe.result(body["command_id"], timeout=FIRST_RESULT_S)
        finally:
            await probe.stop()


async def test_a_first_start_consumes_within_seconds(fresh_settings: Settings) -> None:
    assert (await first_result(fresh_settings))["code"] == 201


async def test_a_first_start_on_an_empty_broker_consumes_within_seconds(
    private_kafka: KafkaNode, test_database: str
) -> None:
    settings = make_settings(test_database, private_kafka.bootstrap, f"t{uuid.uuid4().hex[:8]}")
    assert (await first_result(settings))["code"] == 201


def short_retention(settings: Settings, **overrides: Any) -> Settings:
    return settings.model_copy(
        update={"processed_commands_retention_days": RETENTION_DAYS, **overrides}
    )


async def send_at(probe: KafkaProbe, bodies: Iterable[dict[str, Any]], at_ms: int) -> None:
    for body in bodies:
        await probe.producer.send_and_wait(
            probe.settings.topic_commands,
            json.dumps(body).encode(),
            key=body["organization_id"].encode(),
            timestamp_ms=at_ms,
        )


def applied_ids(bodies: Iterable[dict[str, Any]]) -> set[str]:
    return {b["command_id"] for b in bodies}


async def applied(pool: asyncpg.Pool, bodies: Iterable[dict[str, Any]]) -> set[str]:
    ids = [b["command_id"] for b in bodies]
    rows = await pool.fetch(
        "SELECT command_id FROM processed_commands WHERE command_id = ANY($1)", ids
    )
    return {row["command_id"] for row in rows}


async def group_names(pool: asyncpg.Pool, bodies: Iterable[dict[str, Any]]) -> set[str]:
    names = [b["name"] for b in bodies]
    rows = await pool.fetch("SELECT name FROM customer_groups WHERE name = ANY($1)", names)
    return {row["name"] for row in rows}


def start_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "service.adapters.kafka.consumer_start"]


def commands(label: str) -> list[dict[str, Any]]:
    return [
        command(organization_id=org, name=f"{label} {org} {i} {uuid.uuid4().hex[:6]}")
        for org in ("org_a", "org_b")
        for i in range(2)
    ]


async def test_b_no_committed_offset_skips_commands_beyond_retention_once(
    settings: Settings, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.adapters.kafka.consumer_start")
    settings = short_retention(settings)
    old, recent = commands("Old"), commands("Recent")
    probe = KafkaProbe(settings)
    await probe.start()
    try:
        await send_at(probe, old, int(time.time() * 1000) - HOURS_AGO_2_MS)
        await probe.send_many(recent)
        async with lifespan(settings):
            for body in recent:
                assert (await probe.result(body["command_id"], timeout=20))["code"] == 201
        # Each partition's commands come in order: the old ones were before the recent ones.
        assert not [r for r in probe.results() if r["command_id"] in applied_ids(old)]
        assert await applied(pool, old) == set()
        assert await group_names(pool, old) == set()
        assert await applied(pool, recent) == applied_ids(recent)
        skipped = [r for r in start_logs(caplog) if r.levelno == logging.WARNING]
        assert skipped, caplog.text
        counts = [re.search(r"skipping (\d+) command", r.getMessage()) for r in skipped]
        assert sum(int(m[1]) for m in counts if m) == len(old), caplog.text

        # Committed offsets now, on every partition: a command however old is applied.
        caplog.clear()
        late = command(name=f"Late {uuid.uuid4().hex[:6]}")
        await send_at(probe, [late], int(time.time() * 1000) - HOURS_AGO_2_MS)
        async with lifespan(settings):
            assert (await probe.result(late["command_id"], timeout=20))["code"] == 201
        assert start_logs(caplog) == []
    finally:
        await probe.stop()


async def test_b_start_from_earliest_applies_commands_beyond_retention(
    settings: Settings, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.adapters.kafka.consumer_start")
    settings = short_retention(settings, command_start_without_offset="earliest")
    old = commands("Old")
    probe = KafkaProbe(settings)
    await probe.start()
    try:
        await send_at(probe, old, int(time.time() * 1000) - HOURS_AGO_2_MS)
        async with lifespan(settings):
            for body in old:
                assert (await probe.result(body["command_id"], timeout=20))["code"] == 201
    finally:
        await probe.stop()
    assert await applied(pool, old) == applied_ids(old)
    said = [r.getMessage() for r in start_logs(caplog)]
    assert any("COMMAND_START_WITHOUT_OFFSET=earliest" in m for m in said), said
