"""The dead-letter topic: listing it, and a redrive that applies a fixed message once."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from service.bootstrap import Container
from service.config import Settings
from service.ops.common import OpsError
from service.ops.dlq import DeadLetterFilter, list_dead_letters, redrive
from tests.support import KafkaProbe, command, headers_of


async def dead_lettered_by_a_bug(kafka: KafkaProbe, body: dict[str, Any]) -> None:
    """What the consumer writes when applying a command failed unexpectedly (since fixed)."""
    s = kafka.settings
    headers = {
        "correlation_id": "corr-1",
        "dlq_reason": "processing_failed",
        "dlq_error": "RuntimeError('bug')",
        "dlq_source_topic": s.topic_commands,
        "dlq_source_partition": "0",
        "dlq_source_offset": "7",
        "dlq_source_timestamp": "0",
    }
    await kafka.producer.send_and_wait(
        s.topic_dlq,
        json.dumps(body).encode(),
        key=body["organization_id"].encode(),
        headers=[(k, v.encode()) for k, v in headers.items()],
    )


async def test_list_and_redrive_a_fixed_message_applies_it_once(
    service: Container, kafka: KafkaProbe, pool: asyncpg.Pool, settings: Settings
) -> None:
    await kafka.send(b"not json", key=b"org_a")
    fixed = command(name="Redriven")
    await dead_lettered_by_a_bug(kafka, fixed)
    await kafka.wait_for(settings.topic_dlq, lambda r: len(r) == 2)

    listed = await list_dead_letters(settings, DeadLetterFilter())
    assert listed.matched == 2
    assert dict(listed.reasons) == {"not_json": 1, "processing_failed": 1}
    assert {item["reason"] for item in listed.sample} == {"not_json", "processing_failed"}
    only = await list_dead_letters(settings, DeadLetterFilter(reasons=["processing_failed"]))
    assert only.matched == 1
    assert only.sample[0]["value"] == json.dumps(fixed)
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert (await list_dead_letters(settings, DeadLetterFilter(since=later))).matched == 0
    earlier = datetime.now(UTC) - timedelta(minutes=1)
    assert (await list_dead_letters(settings, DeadLetterFilter(until=earlier))).matched == 0

    dry = await redrive(settings, DeadLetterFilter(), dry_run=True)
    assert (dry.matched, dry.sent, dict(dry.still_malformed)) == (1, 0, {"not_json": 1})
    await asyncio.sleep(0.5)
    assert kafka.results_for(fixed["command_id"]) == []

    sent = await redrive(settings, DeadLetterFilter())
    assert (sent.sent, dict(sent.still_malformed)) == (1, {"not_json": 1})
    result = await kafka.result(fixed["command_id"])
    assert (result["status"], result["code"]) == ("accepted", 201)
    [record] = [
        r
        for r in kafka.records[settings.topic_results]
        if json.loads(r.value)["command_id"] == fixed["command_id"]
    ]
    assert headers_of(record)["correlation_id"] == "corr-1"
    await kafka.wait_events(1)

    again = await redrive(settings, DeadLetterFilter(reasons=["processing_failed"]))
    assert again.sent == 1
    await kafka.wait_for(
        settings.topic_results, lambda _: len(kafka.results_for(fixed["command_id"])) == 2
    )
    first, second = kafka.results_for(fixed["command_id"])
    assert second == first
    await asyncio.sleep(0.3)
    assert await pool.fetchval("SELECT count(*) FROM customer_groups") == 1
    assert len(kafka.events()) == 1
    assert len(kafka.records[settings.topic_dlq]) == 2


def test_a_window_that_ends_before_it_starts_is_refused() -> None:
    now = datetime.now(UTC)
    with pytest.raises(OpsError, match="--until must be later than --since"):
        DeadLetterFilter(since=now, until=now)
