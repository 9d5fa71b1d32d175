"""Commands through real Kafka and PostgreSQL: raw bytes in, results, events and rows out."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import SecretStr

from service.adapters.kafka import Record
from service.adapters.kafka.clients import client_options
from service.bootstrap import Container, lifespan
from service.config import Settings
from tests.e2e.http_support import TcpProxy
from tests.support import KafkaProbe, command, headers_of, wait_until_assigned

RESULT_KEYS = {"command_id", "status", "code", "error", "details", "group"}


async def created(kafka: KafkaProbe, name: str = "VIP", **fields: Any) -> dict[str, Any]:
    result = await kafka.ask(command(name=name, **fields))
    assert result["code"] == 201, result
    group: dict[str, Any] = result["group"]
    return group


async def settle(kafka: KafkaProbe) -> None:
    """Until every event of the commands sent so far is in, proven by a later change's event.

    One organization's commands share a partition and the relay publishes in commit order, so
    once the marker's event is in, any event an earlier command produced is in too."""
    marker = await created(kafka, f"Marker {uuid.uuid4().hex[:8]}")
    await kafka.wait_for(
        kafka.settings.topic_events,
        lambda records: any(headers_of(r)["ce_subject"] == marker["id"] for r in records),
    )


async def events_after_marker(kafka: KafkaProbe, group_id: str) -> list[Record]:
    await settle(kafka)
    return [r for r in kafka.events() if headers_of(r)["ce_subject"] == group_id]


def rejected(result: dict[str, Any], code: int, error: str, details: Any) -> None:
    assert set(result) == RESULT_KEYS
    assert (result["status"], result["code"], result["error"], result["details"]) == (
        "rejected",
        code,
        error,
        details,
    )
    assert result["group"] is None


async def test_create_update_delete_results_rows_and_events(
    service: Container, kafka: KafkaProbe, pool: asyncpg.Pool
) -> None:
    create = command(name=" VIP ", description="Premium", platform_id="12345678")
    made = await kafka.ask(create)
    assert set(made) == RESULT_KEYS
    assert (made["status"], made["code"], made["error"], made["details"]) == (
        "accepted",
        201,
        None,
        None,
    )
    group = made["group"]
    assert (group["name"], group["version"], group["organization_id"]) == ("VIP", 1, "org_a")
    [result_record] = kafka.records[kafka.settings.topic_results]
    assert result_record.key == b"org_a"

    changed = await kafka.ask(
        command("group.update", group_id=group["id"], name="Gold", description=None)
    )
    assert (changed["code"], changed["group"]["version"], changed["group"]["description"]) == (
        200,
        2,
        None,
    )
    gone = await kafka.ask(command("group.delete", group_id=group["id"], expected_version=2))
    assert (gone["code"], gone["group"]["version"]) == (200, 3)
    assert gone["group"]["deleted_at"] is not None

    events = await kafka.wait_events(3)
    assert [headers_of(e)["ce_type"] for e in events] == [
        "group.created",
        "group.updated",
        "group.deleted",
    ]
    assert [headers_of(e)["ce_groupversion"] for e in events] == ["1", "2", "3"]
    assert json.loads(events[1].value)["previous"] == {"name": "VIP", "description": "Premium"}
    assert json.loads(events[2].value) == gone["group"]
    row = await pool.fetchrow("SELECT * FROM customer_groups WHERE id = $1", group["id"])
    assert row is not None
    assert (row["name"], row["version"], row["deleted_at"] is not None) == ("Gold", 3, True)
    assert await kafka.ask(command(name="vip")) != made


async def test_every_rejection_has_its_code_and_linkit_body(
    service: Container, kafka: KafkaProbe, pool: asyncpg.Pool
) -> None:
    group = await created(kafka, "VIP", group_id="grp_vip")
    theirs = await kafka.ask(command(organization_id="org_b", name="Theirs"))

    rejected(
        await kafka.ask(command("group.update", group_id="grp_nope", name="x")),
        404,
        "Group not found",
        {"group_id": "grp_nope"},
    )
    foreign = theirs["group"]["id"]
    rejected(
        await kafka.ask(command("group.delete", group_id=foreign)),
        404,
        "Group not found",
        {"group_id": foreign},
    )
    rejected(
        await kafka.ask(command(name=" vip ")),
        409,
        "Group with same name already exists",
        {"name": "vip"},
    )
    rejected(
        await kafka.ask(command(name="Other", group_id="grp_vip")),
        409,
        "Group already exists",
        {"group_id": "grp_vip"},
    )
    rejected(
        await kafka.ask(
            command("group.update", group_id=group["id"], name="x", expected_version=7)
        ),
        409,
        "Version conflict",
        {"expected_version": 7, "current_version": 1},
    )
    original = command(name="Original")
    await kafka.ask(original)
    reused = {**command(name="Another"), "command_id": original["command_id"]}
    await kafka.send(reused)
    results = await kafka.wait_for(
        kafka.settings.topic_results,
        lambda r: len(kafka.results_for(original["command_id"])) == 2,
    )
    assert results
    rejected(
        kafka.results_for(original["command_id"])[1],
        409,
        "Command id already used with a different payload",
        {"command_id": original["command_id"]},
    )
    rejected(await kafka.ask(command(name="   ")), 422, "Validation error", "Name is required")
    rejected(
        await kafka.ask(command(name="x", description="d" * 501)),
        422,
        "Validation error",
        "Description must be at most 500 characters",
    )
    rejected(
        await kafka.ask(command("group.delete", group_id="nope")),
        422,
        "Validation error",
        "group_id must be 'grp_' followed by 1-60 characters of [A-Za-z0-9_-]",
    )
    names = {r["name"] for r in await pool.fetch("SELECT name FROM customer_groups")}
    assert names == {"VIP", "Theirs", "Original"}
    assert kafka.records[kafka.settings.topic_dlq] == []


async def test_an_update_that_changes_nothing_is_accepted_with_no_event(
    service: Container, kafka: KafkaProbe
) -> None:
    group = await created(kafka, "VIP", description="d")
    result = await kafka.ask(
        command(
            "group.update", group_id=group["id"], name=" VIP", description="d", expected_version=1
        )
    )
    assert (result["status"], result["code"], result["group"]) == ("accepted", 200, group)
    events = await events_after_marker(kafka, group["id"])
    assert [headers_of(e)["ce_type"] for e in events] == ["group.created"]


async def test_a_redelivered_command_gets_the_stored_result_and_changes_nothing(
    service: Container, kafka: KafkaProbe, pool: asyncpg.Pool
) -> None:
    body = command(name="VIP")
    raw = json.dumps(body).encode()
    await kafka.send(raw, key=b"org_a")
    first = await kafka.result(body["command_id"])
    group_id = first["group"]["id"]
    await kafka.ask(command("group.update", group_id=group_id, name="Gold"))
    row_before = await pool.fetchrow("SELECT * FROM customer_groups WHERE id = $1", group_id)

    await kafka.send(raw, key=b"org_a")
    await kafka.wait_for(
        kafka.settings.topic_results, lambda _: len(kafka.results_for(body["command_id"])) == 2
    )

    assert kafka.results_for(body["command_id"]) == [first, first]
    assert first["group"]["version"] == 1
    events = await events_after_marker(kafka, group_id)
    assert [headers_of(e)["ce_groupversion"] for e in events] == ["1", "2"]
    row_after = await pool.fetchrow("SELECT * FROM customer_groups WHERE id = $1", group_id)
    assert row_after == row_before
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE group_id = $1", group_id) == 2


async def test_results_also_go_to_reply_to_with_the_correlation_id(
    service: Container, settings: Settings
) -> None:
    reply_topic = f"{settings.topic_commands}.replies"
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(reply_topic, 1, 1)])
    finally:
        await admin.close()
    kafka = KafkaProbe(settings)
    await kafka.start(reply_topic)
    try:
        body = command(name="VIP")
        await kafka.send(body, headers={"reply_to": reply_topic, "correlation_id": "corr-42"})
        [reply] = await kafka.wait_for(reply_topic, lambda r: len(r) == 1)
        result = await kafka.result(body["command_id"])

        assert json.loads(reply.value) == result
        assert result["code"] == 201
        assert reply.key == b"org_a"
        assert headers_of(reply)["correlation_id"] == "corr-42"
        [on_results] = kafka.records[settings.topic_results]
        assert headers_of(on_results)["correlation_id"] == "corr-42"

        assert (await kafka.ask(command(name="Plain")))["code"] == 201
        assert len(kafka.records[reply_topic]) == 1
    finally:
        await kafka.stop()


@pytest.mark.parametrize("reply_to", ["no-such-topic-anywhere", "not a valid topic!"])
async def test_a_reply_to_that_cannot_be_written_does_not_stall_the_consumer(
    service: Container, kafka: KafkaProbe, reply_to: str
) -> None:
    body = command(name="VIP")
    await kafka.send(body, headers={"reply_to": reply_to, "correlation_id": "c-1"})
    result = await kafka.result(body["command_id"], timeout=20)
    assert result["code"] == 201
    assert (await kafka.ask(command(name="Next")))["code"] == 201


async def test_reply_to_never_writes_into_the_services_own_topics(
    service: Container, kafka: KafkaProbe, settings: Settings
) -> None:
    own = [settings.topic_events, settings.topic_state, settings.topic_dlq, settings.topic_commands]
    bodies = [command(name=f"G{n}") for n in range(len(own))]
    for body, topic in zip(bodies, own, strict=True):
        await kafka.send(body, headers={"reply_to": topic})
    for body in bodies:
        assert (await kafka.result(body["command_id"]))["code"] == 201
    await settle(kafka)

    events = kafka.events()
    assert len(events) == len(bodies) + 1
    assert all(headers_of(e)["ce_type"] == "group.created" for e in events)
    assert all(r.key and r.key.startswith(b"grp_") for r in kafka.records[settings.topic_state])
    assert kafka.records[settings.topic_dlq] == []
    assert len(kafka.results()) == len(bodies) + 1


async def test_one_organizations_commands_apply_in_order(
    service: Container, kafka: KafkaProbe, pool: asyncpg.Pool
) -> None:
    first = command(name="V1", group_id="grp_ordered")
    updates = [
        command("group.update", group_id="grp_ordered", name=f"V{n}", expected_version=n - 1)
        for n in range(2, 121)
    ]
    noise = [command(organization_id="org_b", name=f"B{n}") for n in range(60)]
    interleaved = [first]
    for n, update in enumerate(updates):
        interleaved.append(update)
        if n < len(noise):
            interleaved.append(noise[n])
    await kafka.send_many(interleaved)

    ids = {b["command_id"] for b in interleaved}
    await kafka.wait_for(
        kafka.settings.topic_results,
        lambda _: {r["command_id"] for r in kafka.results()} >= ids,
    )
    results = {r["command_id"]: r for r in kafka.results()}
    assert [results[u["command_id"]]["group"]["version"] for u in updates] == list(range(2, 121))
    assert {results[b["command_id"]]["code"] for b in noise} == {201}
    assert (
        await pool.fetchval("SELECT version FROM customer_groups WHERE id = 'grp_ordered'") == 120
    )
    events = await kafka.wait_for(
        kafka.settings.topic_events,
        lambda records: sum(headers_of(r)["ce_subject"] == "grp_ordered" for r in records) == 120,
    )
    versions = [int(headers_of(e)["ce_groupversion"]) for e in events if e.key == b"grp_ordered"]
    assert versions == list(range(1, 121))


async def _produce(
    kafka: KafkaProbe,
    value: bytes | None,
    key: bytes,
    headers: dict[str, str],
    raw: list[tuple[str, bytes]] | None = None,
) -> Any:
    return await kafka.producer.send_and_wait(
        kafka.settings.topic_commands,
        value,
        key=key,
        headers=[(k, v.encode()) for k, v in headers.items()] + (raw or []),
    )


# Repeated, and a stale dlq_* header from an earlier trip through the DLQ.
RAW_HEADERS = [("x-repeated", b"1"), ("x-repeated", b"2"), ("dlq_reason", b"stale")]


BAD: list[tuple[str, bytes | None, str, bool]] = [
    ("not json", b"{not json", "not_json", False),
    ("json array", b'[{"command_id": "c", "organization_id": "org_a"}]', "not_object", False),
    ("no value", None, "empty", False),
    (
        "unknown type",
        json.dumps(
            {"command_id": "c-type", "organization_id": "org_a", "type": "group.rename"}
        ).encode(),
        "invalid_schema",
        True,
    ),
    (
        "wrong types",
        json.dumps(
            {"command_id": "c-types", "organization_id": "org_a", "type": "group.create", "name": 5}
        ).encode(),
        "invalid_schema",
        True,
    ),
    (
        "NUL byte",
        json.dumps(
            {
                "command_id": "c-nul",
                "organization_id": "org_a",
                "type": "group.create",
                "name": "a\u0000b",
            }
        ).encode(),
        "invalid_schema",
        True,
    ),
    (
        "unknown field",
        json.dumps(
            {
                "command_id": "c-field",
                "organization_id": "org_a",
                "type": "group.create",
                "name": "x",
                "colour": "red",
            }
        ).encode(),
        "invalid_schema",
        True,
    ),
    (
        "no command id",
        json.dumps({"organization_id": "org_a", "type": "group.create", "name": "x"}).encode(),
        "invalid_schema",
        False,
    ),
    (
        "bad organization id",
        json.dumps(
            {"command_id": "c-org", "organization_id": "org a", "type": "group.create", "name": "x"}
        ).encode(),
        "invalid_schema",
        False,
    ),
]


async def test_bad_input_is_dead_lettered_and_the_consumer_keeps_going(
    service: Container, kafka: KafkaProbe, settings: Settings, pool: asyncpg.Pool
) -> None:
    sent = []
    for label, value, _, _ in BAD:
        meta = await _produce(kafka, value, b"org_a", {"x-case": label}, RAW_HEADERS)
        sent.append(meta)
        await kafka.send(command(name=f"After {label}"))
    last = command(name="Last")
    assert (await kafka.ask(last))["code"] == 201

    dead = await kafka.wait_for(settings.topic_dlq, lambda r: len(r) >= len(BAD))
    assert len(dead) == len(BAD)
    by_case = {headers_of(d)["x-case"]: d for d in dead}
    for (label, value, reason, answered), meta in zip(BAD, sent, strict=True):
        letter = by_case[label]
        headers = headers_of(letter)
        assert [(k, v) for k, v in letter.headers if k == "x-repeated"] == RAW_HEADERS[:2]
        assert [k for k, _ in letter.headers].count("dlq_reason") == 1
        assert letter.value == value, label
        assert letter.key == b"org_a"
        assert headers["dlq_reason"] == reason, label
        assert headers["dlq_error"]
        assert headers["dlq_source_topic"] == settings.topic_commands
        assert (headers["dlq_source_partition"], headers["dlq_source_offset"]) == (
            str(meta.partition),
            str(meta.offset),
        )
        if answered:
            command_id = json.loads(value or b"")["command_id"]
            rejected(
                kafka.results_for(command_id)[0], 422, "Validation error", headers["dlq_error"]
            )
    answered_ids = {json.loads(v or b"")["command_id"] for _, v, _, a in BAD if a}
    rejections = [r for r in kafka.results() if r["status"] == "rejected"]
    assert {r["command_id"] for r in rejections} == answered_ids
    names = {r["name"] for r in await pool.fetch("SELECT name FROM customer_groups")}
    assert names == {f"After {label}" for label, *_ in BAD} | {"Last"}


async def test_a_rule_break_is_answered_but_not_dead_lettered(
    service: Container, kafka: KafkaProbe, settings: Settings
) -> None:
    result = await kafka.ask(command(name="x" * 101))
    rejected(result, 422, "Validation error", "Name must be at most 100 characters")
    await created(kafka, "Next")
    assert kafka.records[settings.topic_dlq] == []


async def test_headers_that_are_null_or_not_utf8_do_not_stop_the_consumer_and_go_back_as_sent(
    service: Container, kafka: KafkaProbe, settings: Settings
) -> None:
    good = command(name="Headers")
    await kafka.producer.send_and_wait(
        settings.topic_commands,
        json.dumps(good).encode(),
        key=b"org_a",
        headers=[("reply_to", None), ("correlation_id", b"\xff-corr"), ("x-null", None)],
    )
    await kafka.producer.send_and_wait(
        settings.topic_commands,
        b"junk",
        key=b"org_a",
        headers=[("x-null", None), ("x-binary", b"\xff\xfe")],
    )
    assert (await kafka.result(good["command_id"], timeout=20))["code"] == 201
    [answer] = [
        r
        for r in kafka.records[settings.topic_results]
        if json.loads(r.value)["command_id"] == good["command_id"]
    ]
    assert dict(answer.headers)["correlation_id"] == b"\xff-corr"
    [letter] = await kafka.wait_for(settings.topic_dlq, lambda r: len(r) == 1, timeout=20)
    assert letter.value == b"junk"
    headers = dict(letter.headers)
    assert (headers["x-null"], headers["x-binary"]) == (b"", b"\xff\xfe")
    assert (await kafka.ask(command(name="After")))["code"] == 201


async def test_a_value_over_one_mebibyte_is_dead_lettered_with_a_422(
    service: Container, kafka: KafkaProbe, settings: Settings
) -> None:
    # The broker limits record batches to about 1 MiB *compressed*, so a compressing producer
    # is how an oversize command really arrives on a default topic. Its copy cannot fit the
    # DLQ topic (same limit, and the service does not compress): the dead letter holds the
    # first bytes, flagged, and its dlq_source_* headers point at the original.
    body = command(name="Big", description="d" * (1024 * 1024))
    raw = json.dumps(body).encode()
    assert len(raw) > settings.command_max_bytes
    producer = AIOKafkaProducer(
        **client_options(settings), compression_type="gzip", max_request_size=4 * 1024 * 1024
    )
    await producer.start()
    try:
        meta = await producer.send_and_wait(settings.topic_commands, raw, key=b"org_a")
    finally:
        await producer.stop()

    result = await kafka.result(body["command_id"], timeout=20)
    rejected(
        result,
        422,
        "Validation error",
        f"The message is larger than {settings.command_max_bytes} bytes",
    )
    [letter] = await kafka.wait_for(settings.topic_dlq, lambda r: len(r) == 1)
    headers = headers_of(letter)
    assert headers["dlq_reason"] == "too_large"
    assert (headers["dlq_truncated"], headers["dlq_original_size"]) == ("true", str(len(raw)))
    assert headers["dlq_source_offset"] == str(meta.offset)
    assert letter.value is not None
    assert raw.startswith(letter.value)
    assert (await kafka.ask(command(name="After")))["code"] == 201


def retries(container: Container) -> float:
    value = container.metrics.registry.get_sample_value("customer_groups_transient_errors_total")
    return value or 0.0


async def test_a_database_outage_is_waited_out_not_dead_lettered(
    settings: Settings, pool: asyncpg.Pool, kafka: KafkaProbe
) -> None:
    url = settings.database_url.get_secret_value()
    host_port = url.split("@", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    proxied = settings.model_copy(
        update={"database_url": SecretStr(url.replace(host_port, f"127.0.0.1:{proxy.port}"))}
    )
    async with lifespan(proxied) as container:
        await wait_until_assigned(container)
        assert (await kafka.ask(command(name="Before")))["code"] == 201

        await proxy.cut()
        during = command(name="During")
        await kafka.send(during)
        for _ in range(100):
            if retries(container) >= 2:
                break
            await asyncio.sleep(0.05)
        assert retries(container) >= 2
        assert kafka.results_for(during["command_id"]) == []
        await proxy.start()

        result = await kafka.result(during["command_id"], timeout=30)
        assert result["code"] == 201
        assert (await kafka.ask(command(name="After")))["code"] == 201
        await kafka.wait_events(3)
    await proxy.cut()
    assert kafka.records[settings.topic_dlq] == []
    assert len(kafka.results_for(during["command_id"])) == 1
    names = {r["name"] for r in await pool.fetch("SELECT name FROM customer_groups")}
    assert names == {"Before", "During", "After"}
