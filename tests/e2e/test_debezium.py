"""Debezium instead of our relay: the service writes the outbox of the logical-replication
database with OUTBOX_PUBLISHER=external, Kafka Connect (deploy/local/debezium.sh) publishes
it, and the events on the topic are the contract's."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import asyncpg
import jsonschema
import pytest
from aiokafka.partitioner import DefaultPartitioner
from pydantic import SecretStr

from service.adapters.kafka import Record
from service.adapters.kafka.events import dataschema
from service.bootstrap import Container, lifespan
from service.config import Settings
from tests.support import KafkaProbe, command, wait_until_assigned

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "local" / "debezium.sh"
EVENT_SCHEMA = json.loads((ROOT / "docs" / "schemas" / "event.schema.json").read_text())
# The first start fetches Kafka Connect and Debezium with Maven; later ones take seconds.
START_TIMEOUT_S = 600
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CONSTANT_HEADERS = {"ce_specversion": b"1.0", "content-type": b"application/json"}

OUTBOX_ROWS = """
SELECT event_id::text AS event_id, event_type, organization_id, group_id, group_version,
       command_id, traceparent, payload::text AS payload, occurred_at
FROM outbox WHERE organization_id = ANY($1) ORDER BY id
"""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


async def script(*args: str, env: dict[str, str], timeout: float) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        *args,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(timeout):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
        return -1, output.decode(errors="replace") + f"\n(no answer within {timeout:.0f}s)"
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


@pytest.fixture
async def debezium_url(settings: Settings) -> AsyncIterator[str]:
    """Connect running with the Outbox Event Router onto this test's events topic; the URL of
    the database it captures. Stopped afterwards, however the test ends."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing and not in_ci():
        # In CI the script installs them; elsewhere a test installs nothing.
        pytest.skip(f"Debezium needs {' and '.join(missing)} (deploy/local/debezium.sh)")
    env = {
        **os.environ,
        "DEBEZIUM_EVENTS_TOPIC": settings.topic_events,
        "DEBEZIUM_CE_SOURCE": settings.ce_source,
        "DEBEZIUM_SNAPSHOT_MODE": "no_data",
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
    }
    _, status = await script("status", env=env, timeout=30)
    if status.startswith("connect: running"):
        # Someone else's Connect: stopping it would end their run, and reusing it would
        # send this test's events to their topic.
        pytest.fail(
            f"Kafka Connect is already running: {status.strip()}. If nothing else uses it,"
            " stop it with deploy/local/debezium.sh stop.",
            pytrace=False,
        )
    try:
        code, output = await script("start", env=env, timeout=START_TIMEOUT_S)
        if code != 0:
            pytest.fail(
                f"deploy/local/debezium.sh start failed ({code}):\n{output[-6000:]}", pytrace=False
            )
        code, url = await script("url", env=env, timeout=30)
        assert code == 0, url
        yield url.strip()
    finally:
        code, output = await script("stop", env=env, timeout=120)
        assert code == 0, output


@pytest.fixture
async def service_on_debezium(settings: Settings, debezium_url: str) -> AsyncIterator[Container]:
    external = settings.model_copy(
        update={"database_url": SecretStr(debezium_url), "outbox_publisher": "external"}
    )
    async with lifespan(external) as container:
        await wait_until_assigned(container)
        yield container


def headers_of(record: Record) -> dict[str, bytes | None]:
    """Debezium writes a header with no value where the row has none (traceparent)."""
    names = [name for name, _ in record.headers]
    assert len(names) == len(set(names)), f"a header repeated: {names}"
    return dict(record.headers)


@pytest.mark.timeout(START_TIMEOUT_S + 300)
async def test_debezium_publishes_each_outbox_row_once_as_the_contracts_event(
    service_on_debezium: Container, kafka: KafkaProbe, debezium_url: str
) -> None:
    container = service_on_debezium
    assert container.relay is None
    assert "pruner" in {task.get_name() for task in container.tasks}
    settings = container.settings
    run = uuid.uuid4().hex[:8]
    org, other_org = f"org_dbz_{run}", f"org_dbz2_{run}"

    create = command(organization_id=org, name="VIP Customers", description="High-value")
    created = await kafka.ask(create, headers={"traceparent": TRACEPARENT})
    group_id = created["group"]["id"]
    sent = [
        create,
        command("group.update", org, group_id=group_id, name="VIP", description=None),
        command("group.update", org, group_id=group_id, name="VIP"),  # no change, no event
        command("group.customers.add", org, group_id=group_id, customer_ids=["c1", "c2", "c3"]),
        command("group.customers.remove", org, group_id=group_id, customer_ids=["c2"]),
        command("group.delete", org, group_id=group_id),
        command(organization_id=other_org, name="Wholesale"),
    ]
    results = [created] + [await kafka.ask(body) for body in sent[1:]]
    assert [r["status"] for r in results] == ["accepted"] * len(sent)
    other_group_id = results[-1]["group"]["id"]
    results.append(
        await kafka.ask(
            command("group.update", other_org, group_id=other_group_id, description="B2B")
        )
    )
    versions = {(r["group"]["id"], r["group"]["version"]): r for r in results}

    async with asyncpg.create_pool(debezium_url, min_size=1, max_size=1) as pool:
        rows = await pool.fetch(OUTBOX_ROWS, [org, other_org])
    assert [(r["group_id"], r["group_version"]) for r in rows] == [
        *((group_id, v) for v in range(1, 6)),
        (other_group_id, 1),
        (other_group_id, 2),
    ]

    def ours() -> list[Record]:
        return [
            e
            for e in kafka.events()
            if dict(e.headers).get("ce_organizationid") in (org.encode(), other_org.encode())
        ]

    await kafka.wait_for(settings.topic_events, lambda _: len(ours()) >= len(rows), timeout=60)
    # Connect flushes its offsets every second: a resend would come within a few.
    await asyncio.sleep(2)
    events = ours()

    assert Counter(dict(e.headers)["ce_id"] for e in events) == Counter(
        r["event_id"].encode() for r in rows
    ), "not exactly one event per outbox row"

    by_id = {r["event_id"]: r for r in rows}
    validator = jsonschema.Draft202012Validator(EVENT_SCHEMA)
    partitions = list(range(settings.topic_partitions_events))
    partition_of = DefaultPartitioner()
    for event in events:
        headers = headers_of(event)
        row = by_id[(headers.pop("ce_id") or b"").decode()]
        result = versions[(row["group_id"], row["group_version"])]
        ce_time = (headers.pop("ce_time") or b"").decode()
        assert RFC3339.fullmatch(ce_time), ce_time
        assert datetime.fromisoformat(ce_time) == row["occurred_at"]
        traceparent = headers.pop("traceparent", None)
        assert traceparent == (row["traceparent"].encode() if row["traceparent"] else None)
        assert headers.pop("ce_dataschema") == dataschema(settings).encode()
        assert headers == {
            **CONSTANT_HEADERS,
            "ce_type": row["event_type"].encode(),
            "ce_source": settings.ce_source.encode(),
            "ce_subject": row["group_id"].encode(),
            "ce_organizationid": row["organization_id"].encode(),
            "ce_groupversion": str(row["group_version"]).encode(),
            "ce_commandid": row["command_id"].encode(),
        }
        assert event.key == row["group_id"].encode()
        assert event.partition == partition_of(event.key, partitions, partitions)
        assert event.value == row["payload"].encode()
        value = json.loads(event.value)
        validator.validate(value)
        group = {k: v for k, v in value.items() if k not in ("previous", "customer_ids")}
        assert group == result["group"]

    assert rows[0]["traceparent"] == TRACEPARENT
    in_order: dict[bytes, list[int]] = defaultdict(list)
    for event in events:
        in_order[event.key].append(int(dict(event.headers)["ce_groupversion"]))
    assert in_order == {group_id.encode(): [1, 2, 3, 4, 5], other_group_id.encode(): [1, 2]}
    of_group = [e for e in events if e.key == group_id.encode()]
    assert [dict(e.headers)["ce_type"] for e in of_group] == [
        b"group.created",
        b"group.updated",
        b"group.customers_added",
        b"group.customers_removed",
        b"group.deleted",
    ]
    assert [dict(e.headers)["ce_commandid"].decode() for e in of_group] == [
        body["command_id"] for body in sent[:6] if body is not sent[2]
    ]
    assert json.loads(of_group[1].value)["previous"] == {
        "name": "VIP Customers",
        "description": "High-value",
    }
    assert [json.loads(e.value)["customer_ids"] for e in of_group[2:4]] == [
        ["c1", "c2", "c3"],
        ["c2"],
    ]
    # Debezium writes no state topic (docs/operations.md: rebuild-state keeps it).
    assert kafka.records[settings.topic_state] == []
