"""Change events as downstream consumers see them: commands in through Kafka, CloudEvents out
on the events topic and the latest state on the compacted state topic."""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from datetime import datetime

import asyncpg

from service.bootstrap import Container, lifespan
from service.config import Settings
from tests.relay_support import (
    Downstream,
    assert_each_group_in_order,
    ce_id,
    first_copies,
    group_of,
    outbox_event_ids,
    wait_published,
)
from tests.support import KafkaProbe, command, headers_of, wait_until_assigned

RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_each_change_is_a_cloudevent_carrying_the_group(
    service: Container, kafka: KafkaProbe, pool: asyncpg.Pool
) -> None:
    create = command(name="VIP Customers", description="High-value", platform_id="12345678")
    created = await kafka.ask(create, headers={"traceparent": TRACEPARENT})
    group_id = created["group"]["id"]
    update = command("group.update", group_id=group_id, name="VIP", description=None)
    updated = await kafka.ask(update)
    delete = command("group.delete", group_id=group_id)
    deleted = await kafka.ask(delete)
    assert [r["status"] for r in (created, updated, deleted)] == ["accepted"] * 3

    events = await kafka.wait_events(3)
    assert len(events) == 3
    rows = {
        r["group_version"]: str(r["event_id"])
        for r in await pool.fetch("SELECT group_version, event_id FROM outbox")
    }
    steps = [
        ("group.created", create, created, TRACEPARENT),
        ("group.updated", update, updated, None),
        ("group.deleted", delete, deleted, None),
    ]
    for event, (event_type, sent, result, traceparent) in zip(events, steps, strict=True):
        group = result["group"]
        headers = headers_of(event)
        headers.pop("correlation_id", None)  # FastStream's own, on every message it sends
        ce_time = headers.pop("ce_time")
        expected = {
            "ce_specversion": "1.0",
            "ce_id": rows[group["version"]],
            "ce_type": event_type,
            "ce_source": service.settings.ce_source,
            "ce_subject": group_id,
            "content-type": "application/json",
            "ce_organizationid": "org_a",
            "ce_groupversion": str(group["version"]),
            "ce_commandid": sent["command_id"],
            "ce_dataschema": f"{service.settings.ce_dataschema_base}/event.schema.json",
        }
        if traceparent:
            expected["traceparent"] = traceparent
        assert headers == expected
        assert RFC3339.fullmatch(ce_time), ce_time
        assert datetime.fromisoformat(ce_time) == datetime.fromisoformat(group["updated_at"])
        assert event.key == group_id.encode()

    assert [group_of(e)["version"] for e in events] == [1, 2, 3]
    assert group_of(events[0]) == created["group"]
    assert group_of(events[1]) == {
        **updated["group"],
        "previous": {"name": "VIP Customers", "description": "High-value"},
    }
    assert group_of(events[2]) == deleted["group"]
    assert deleted["group"]["deleted_at"] is not None
    assert len({uuid.UUID(ce_id(e)) for e in events}) == 3


async def test_each_groups_events_carry_contiguous_versions_in_order(
    service: Container, kafka: KafkaProbe
) -> None:
    created = [await kafka.ask(command(organization_id=org)) for org in ("org_a", "org_a", "org_b")]
    updates = 15
    await kafka.send_many(
        command(
            "group.update",
            organization_id=r["group"]["organization_id"],
            group_id=r["group"]["id"],
            name=f"Name {i} {r['group']['id']}",
        )
        for i in range(updates)
        for r in created
    )
    total = len(created) * (updates + 1)
    events = await kafka.wait_events(total)

    versions = assert_each_group_in_order(events)
    assert sorted(versions) == sorted(r["group"]["id"] for r in created)
    assert all(len(v) == updates + 1 for v in versions.values())
    assert all(int(headers_of(e)["ce_groupversion"]) == group_of(e)["version"] for e in events)


async def test_state_topic_holds_the_latest_group_and_a_tombstone_on_delete(
    service: Container, kafka: KafkaProbe
) -> None:
    groups = [(await kafka.ask(command()))["group"] for _ in range(4)]
    for group in groups[:2]:
        for name in ("First rename", "Second rename"):
            body = command("group.update", group_id=group["id"], name=f"{name} {group['id']}")
            await kafka.ask(body)
    await kafka.ask(command("group.delete", group_id=groups[1]["id"]))
    await kafka.ask(command("group.delete", group_id=groups[3]["id"]))
    changes = 4 + 4 + 2

    state = kafka.settings.topic_state
    records = await kafka.wait_for(state, lambda records: len(records) >= changes)
    latest = {r.key: r.value for r in records}  # what compaction keeps: the last value per key
    await kafka.wait_events(changes)
    final = {}
    for event in kafka.events():
        group = group_of(event)
        group.pop("previous", None)
        final[group["id"]] = group
    live = {g["id"] for g in groups} - {groups[1]["id"], groups[3]["id"]}

    assert len(records) == changes
    assert set(latest) == {g["id"].encode() for g in groups}
    for key, value in latest.items():
        group_id = key.decode()
        if group_id in live:
            assert value is not None
            assert json.loads(value) == final[group_id]
            assert "previous" not in json.loads(value)
        else:
            assert value is None, f"{group_id} was deleted: a tombstone is expected"


async def test_a_consumer_deduplicating_on_ce_id_sees_each_change_once(
    service: Container, kafka: KafkaProbe, pool: asyncpg.Pool
) -> None:
    created = [
        (await kafka.ask(command(organization_id=org)))["group"] for org in ("org_a", "org_b")
    ]
    await kafka.send_many(
        command(
            "group.update",
            organization_id=g["organization_id"],
            group_id=g["id"],
            name=f"Name {i} {g['id']}",
        )
        for i in range(10)
        for g in created
    )
    await kafka.wait_events(22)
    await wait_published(pool)
    # A relay that died after Kafka's acknowledgement but before marking: the rows go out again.
    await pool.execute("UPDATE outbox SET published_at = NULL WHERE group_version > 5")
    assert service.relay is not None
    service.relay.wakeup.set()
    await wait_published(pool)
    records = await kafka.wait_events(22 + 2 * 6)

    downstream = Downstream()
    downstream.consume(records)

    assert len(records) == 34
    assert Counter(downstream.applied) == Counter(
        (g["id"], version) for g in created for version in range(1, 12)
    )
    assert downstream.seen == await outbox_event_ids(pool)
    assert len(first_copies(records)) == 22


async def test_a_batch_shared_among_lanes_keeps_each_groups_order_and_each_result(
    settings: Settings, pool: asyncpg.Pool, kafka: KafkaProbe
) -> None:
    """Commands queued before the service starts make its first batches large enough to
    run as three transactions at once; each organization's commands stay in one of them."""
    settings = settings.model_copy(update={"command_lanes": 3, "command_batch_max": 1000})
    organizations = [f"org_{i}" for i in range(6)]
    groups = {org: [f"grp_{org}_{n}" for n in range(10)] for org in organizations}
    updates = 5
    commands = [
        command(organization_id=org, group_id=group_id, name=f"Name {group_id}")
        for org in organizations
        for group_id in groups[org]
    ]
    commands += [
        command("group.update", organization_id=org, group_id=group_id, name=f"Name {i} {group_id}")
        for i in range(updates)
        for org in organizations
        for group_id in groups[org]
    ]
    # The name a group of the same organization took earlier in the batch.
    taken = command(organization_id="org_0", name=f"NAME {updates - 1} GRP_ORG_0_0")
    # One group id asked for by two organizations, in two lanes: the key decides.
    contested = [
        command(organization_id=org, group_id="grp_contested", name="Contested")
        for org in ("org_1", "org_2")
    ]
    commands += [taken, *contested]
    await kafka.send_many(commands)

    async with lifespan(settings) as container:
        await wait_until_assigned(container)
        await kafka.wait_for(settings.topic_results, lambda records: len(records) >= len(commands))
        events = await kafka.wait_events(len(commands) - 2)

    codes = {r["command_id"]: r["code"] for r in kafka.results()}
    assert len(kafka.results()) == len(commands)
    assert codes.pop(taken["command_id"]) == 409
    outcomes = sorted(kafka.results_for(c["command_id"])[0]["error"] or "" for c in contested)
    assert outcomes == ["", "Group already exists"]
    for c in contested:
        codes.pop(c["command_id"])
    created = len(organizations) * len(groups["org_0"])
    assert sorted(codes.values()) == [200] * created * updates + [201] * created
    versions = assert_each_group_in_order(events)
    assert versions.pop("grp_contested") == [1]
    assert {len(v) for v in versions.values()} == {updates + 1}
    rows = await pool.fetch("SELECT id, name, version FROM customer_groups")
    assert sum(1 for r in rows if r["id"] == "grp_contested") == 1
    rows = [r for r in rows if r["id"] != "grp_contested"]
    assert {(r["id"], r["name"], r["version"]) for r in rows} == {
        (group_id, f"Name {updates - 1} {group_id}", updates + 1)
        for ids in groups.values()
        for group_id in ids
    }
