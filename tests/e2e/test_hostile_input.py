"""One producer's hostile headers, payloads and stored poison stop no other tenant, and a
restart finds the service working (real Kafka and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import random
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


def random_hostile_record(rng: random.Random) -> tuple[bytes | None, bytes | None, list[Any]]:
    """(key, value, headers): garbage, near-valid commands, and valid ones with wild headers."""

    def junk(limit: int) -> bytes:
        return rng.randbytes(rng.choice([0, 1, 5, 40, limit]))

    kind = rng.randrange(4)
    if kind == 0:
        value: bytes | None = junk(5000) if rng.random() < 0.9 else None
    elif kind == 1:
        body: dict[str, Any] = command(organization_id=f"org_fz{rng.randrange(5)}")
        field = rng.choice([*body, "customer_ids", "group_id", "expected_version", "x"])
        body[field] = rng.choice(
            [None, 7, -1, "", "\x00", "\x1b[2J", "é" * 300, [1, "a"], {"a": [None]}, "grp_x"]
        )
        value = json.dumps(body).encode()
    else:
        value = json.dumps(command(organization_id=f"org_fz{rng.randrange(5)}")).encode()
    names = ["reply_to", "correlation_id", "traceparent", "tracestate", "x"]
    headers = [(rng.choice(names), junk(3000)) for _ in range(rng.randrange(4))]
    key = rng.choice([None, b"", b"org_fz1", junk(100)])
    # A Kafka record needs a key or a value.
    return key, value if key is not None or value is not None else b"", headers


async def test_a_few_hundred_random_hostile_records_leave_the_service_live(
    settings: Settings, pool: asyncpg.Pool, kafka: KafkaProbe
) -> None:
    """Each record ends as a result, a dead letter, or both; then another tenant goes on."""
    rng = random.Random(20261206)
    records = [random_hostile_record(rng) for _ in range(300)]
    async with running_app(settings) as client:
        sent = [
            await kafka.producer.send(settings.topic_commands, value, key=key, headers=headers)
            for key, value, headers in records
        ]
        where = [(m.partition, m.offset) for m in await asyncio.gather(*sent)]
        await another_tenant_goes_on(client, kafka)
        assert (await client.get("/health/live")).status_code == 200

        def accounted() -> list[int]:
            dead = {
                (int(h["dlq_source_partition"]), int(h["dlq_source_offset"]))
                for h in (dict(r.headers) for r in kafka.records[settings.topic_dlq])
            }
            answered = {r["command_id"] for r in kafka.results()}
            return [
                i
                for i, (_, value, _) in enumerate(records)
                if where[i] in dead or command_id_of(value) in answered
            ]

        await kafka.wait_for(settings.topic_results, lambda _: len(accounted()) == len(records))
    for record in kafka.records[settings.topic_results]:
        assert len(record.value) + sum(len(v) for _, v in record.headers) < 10_000


def command_id_of(value: bytes | None) -> str | None:
    try:
        body = json.loads(value or b"")
    except ValueError:
        return None
    found = body.get("command_id") if isinstance(body, dict) else None
    return found if isinstance(found, str) else None
