"""One producer's hostile headers, payloads and stored poison stop no other tenant, and a
restart finds the service working (real Kafka and PostgreSQL)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer

from service.adapters.kafka import reply_copies
from service.adapters.kafka.clients import client_options
from service.bootstrap import Container
from service.config import Settings
from service.domain.headers import valid_traceparent
from tests.e2e.http_support import running_app
from tests.support import KafkaProbe, command

HUGE = 1_500_000
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def hostile_commands() -> list[tuple[str, dict[str, Any], list[tuple[str, bytes]]]]:
    """(what, command, headers): each command itself is valid."""
    cases: list[tuple[str, list[tuple[str, bytes]]]] = [
        ("reply_to longer than a topic name", [("reply_to", b"r" * 40_000)]),
        ("reply_to that is no topic name", [("reply_to", b"../\x1b[31mx")]),
        ("1.5 MB traceparent", [("traceparent", b"0" * HUGE)]),
        ("NUL in traceparent", [("traceparent", TRACEPARENT.encode() + b"\x00")]),
        ("1.5 MB correlation_id", [("correlation_id", b"c" * HUGE)]),
        ("1.5 MB tracestate", [("tracestate", b"k=" + b"v" * HUGE)]),
    ]
    return [(what, command(organization_id="org_evil"), headers) for what, headers in cases]


async def insert_poison(pool: asyncpg.Pool) -> None:
    """An outbox row written before events were bounded: Kafka could never take it."""
    payload = json.dumps({"id": "grp_poison", "name": "x" * HUGE})
    for version in (1, 2):
        await pool.execute(
            """
            INSERT INTO outbox (event_type, organization_id, group_id, group_version,
                                command_id, traceparent, payload, occurred_at)
            VALUES ($1, 'org_evil', 'grp_poison', $2, $3, $4, $5::json, now())
            """,
            "group.created" if version == 1 else "group.updated",
            version,
            f"legacy-{version}",
            "0" * 2000,
            payload if version == 1 else '{"id": "grp_poison", "name": "later"}',
        )


async def send_raw(settings: Settings, cmd: dict[str, Any], headers: list[Any]) -> None:
    # Compressed, as a hostile producer would send it, so the broker takes the headers.
    producer = AIOKafkaProducer(
        **client_options(settings), compression_type="gzip", max_request_size=4 * HUGE
    )
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topic_commands,
            json.dumps(cmd).encode(),
            key=cmd["organization_id"].encode(),
            headers=headers,
        )
    finally:
        await producer.stop()


async def another_tenant_goes_on(client: httpx.AsyncClient, kafka: KafkaProbe) -> None:
    body = command(organization_id="org_b")
    result = await kafka.ask(body)
    assert result["code"] == 201
    group_id = result["group"]["id"]
    await kafka.wait_for(
        kafka.settings.topic_events,
        lambda records: any(r.key == group_id.encode() for r in records),
        timeout=15,
    )
    ready = await client.get("/health/ready")
    assert ready.status_code == 200, ready.text


async def test_hostile_input_stops_no_other_tenant_and_a_restart_recovers(
    settings: Settings, pool: asyncpg.Pool, kafka: KafkaProbe
) -> None:
    await insert_poison(pool)
    cases = hostile_commands()
    async with running_app(settings) as client:
        for _, cmd, headers in cases:
            await send_raw(settings, cmd, headers)
        for what, cmd, _ in cases:
            result = await kafka.result(cmd["command_id"])
            assert result["code"] == 201, what
        await another_tenant_goes_on(client, kafka)
        ready = (await client.get("/health/ready")).json()
        assert ready["details"]["outbox_parked"] == 2
    async with running_app(settings) as client:
        await another_tenant_goes_on(client, kafka)

    for record in kafka.records[settings.topic_results]:
        assert len(record.value) + sum(len(v) for _, v in record.headers) < 10_000
        assert dict(record.headers).get("correlation_id", b"") != b"c" * HUGE
    for record in kafka.events():
        traceparent = dict(record.headers).get("traceparent")
        assert traceparent is None or valid_traceparent(traceparent.decode())
    assert not [r for r in kafka.events() if r.key == b"grp_poison"]
    parked = await pool.fetch(
        "SELECT group_version, parked_reason FROM outbox WHERE parked_at IS NOT NULL"
        " ORDER BY group_version"
    )
    assert [r["group_version"] for r in parked] == [1, 2]
    assert "larger than" in parked[0]["parked_reason"]
    assert "waits behind" in parked[1]["parked_reason"]
    stored = await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE traceparent IS NOT NULL AND group_id <> 'grp_poison'"
    )
    assert stored == 0


async def test_many_distinct_reply_topics_neither_grow_the_metadata_nor_slow_the_results(
    service: Container, kafka: KafkaProbe
) -> None:
    bodies = [command(organization_id="org_evil") for _ in range(150)]
    await kafka.send_many(bodies[:-1])
    for body in bodies:
        await kafka.send(body, headers={"reply_to": f"no-such-topic-{uuid.uuid4().hex}"})
    await kafka.result(bodies[-1]["command_id"])
    other = command(organization_id="org_b")
    assert (await kafka.ask(other))["code"] == 201
    assert service.copies is not None
    assert len(service.copies.producer_topics()) <= reply_copies.TOPICS_MAX + 1
