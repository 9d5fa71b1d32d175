"""Customers in groups over HTTP, against the running service on real Kafka and PostgreSQL."""

from __future__ import annotations

import json
import random
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from service.config import Settings
from tests.e2e.http_support import GROUPS, ORG_A, ORG_B, create, running_app
from tests.support import KafkaProbe

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@pytest.fixture
async def client(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    # The purge of deleted groups' members runs at start and then not again during a test,
    # so their rows are still there for the reads to leave out.
    unpurged = settings.model_copy(update={"prune_interval_s": 3600.0})
    async with running_app(unpurged) as client:
        yield client


def error(code: int, message: str, details: object) -> dict[str, object]:
    return {"code": code, "error": message, "details": details}


def members_of(group_id: str) -> str:
    return f"{GROUPS}/{group_id}/customers"


def one_member(group_id: str, customer_id: str) -> str:
    return f"{members_of(group_id)}/{quote(customer_id, safe='')}"


def groups_of(customer_id: str) -> str:
    return f"/api/v1/customers/{quote(customer_id, safe='')}/customer-groups"


async def add(
    client: httpx.AsyncClient, group_id: str, *customer_ids: str, **headers: str
) -> httpx.Response:
    return await client.post(
        members_of(group_id), json={"customer_ids": customer_ids}, headers={**ORG_A, **headers}
    )


async def remove(
    client: httpx.AsyncClient, group_id: str, *customer_ids: str, **headers: str
) -> httpx.Response:
    return await client.post(
        f"{members_of(group_id)}/remove",
        json={"customer_ids": customer_ids},
        headers={**ORG_A, **headers},
    )


async def group_now(client: httpx.AsyncClient, group_id: str) -> dict[str, Any]:
    response = await client.get(f"{GROUPS}/{group_id}", headers=ORG_A)
    assert response.status_code == 200, response.text
    group: dict[str, Any] = response.json()["customer_group"]
    return group


async def follow(
    client: httpx.AsyncClient, url: str, key: str, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    """Every page of a listing, by its cursors; asserts each page is full but the last."""
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = params if cursor is None else {**params, "cursor": cursor}
        response = await client.get(url, params=query, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {key, "next_cursor"}
        seen += body[key]
        if body["next_cursor"] is None:
            return seen
        assert len(body[key]) == params.get("limit", 50)
        # A cursor that does not move on must fail the test, not hang it.
        assert body["next_cursor"] != cursor, "the page did not move on"
        cursor = body["next_cursor"]


async def member_ids(client: httpx.AsyncClient, group_id: str) -> list[str]:
    members = await follow(client, members_of(group_id), "customers", ORG_A, limit=1000)
    return [m["customer_id"] for m in members]


async def test_add_answers_the_group_after_the_command_and_emits_one_event(
    client: httpx.AsyncClient, kafka: KafkaProbe
) -> None:
    group = await create(client, "VIP")

    response = await add(client, group["id"], "cus_2", "cus_1", "cus_2")

    assert response.status_code == 200, response.text
    assert set(response.json()) == {"customer_group"}
    added = response.json()["customer_group"]
    assert (added["version"], added["customer_count"]) == (2, 2)
    assert added["updated_at"] > group["updated_at"]
    assert response.headers["etag"] == '"2"'
    assert await group_now(client, group["id"]) == added
    _, added_event = await kafka.wait_events(2)
    assert dict(added_event.headers)["ce_type"] == b"group.customers_added"
    assert json.loads(added_event.value) == {**added, "customer_ids": ["cus_2", "cus_1"]}

    again = await add(client, group["id"], "cus_1", "cus_3")
    assert again.json()["customer_group"]["customer_count"] == 3
    assert again.headers["etag"] == '"3"'
    nothing_new = await add(client, group["id"], "cus_3")
    assert nothing_new.status_code == 200
    assert nothing_new.json() == again.json()
    assert await member_ids(client, group["id"]) == ["cus_1", "cus_2", "cus_3"]


async def test_members_come_in_customer_id_order_page_by_page(client: httpx.AsyncClient) -> None:
    group = await create(client, "Many")
    ids = [f"cus_{i:03}" for i in range(23)]
    first = await add(client, group["id"], *random.sample(ids[:20], 20))
    second = await add(client, group["id"], *ids[20:])
    first_time = first.json()["customer_group"]["updated_at"]
    second_time = second.json()["customer_group"]["updated_at"]

    for limit in (1, 4, 5, 22, 23, 1000):
        listed = await follow(client, members_of(group["id"]), "customers", ORG_A, limit=limit)
        assert [m["customer_id"] for m in listed] == ids, limit
    listed = await follow(client, members_of(group["id"]), "customers", ORG_A)
    assert [set(m) for m in listed] == [{"customer_id", "added_at"}] * 23
    assert all(TIMESTAMP.fullmatch(m["added_at"]) for m in listed)
    assert [m["added_at"] for m in listed] == [first_time] * 20 + [second_time] * 3

    page = (await client.get(members_of(group["id"]), params={"limit": 10}, headers=ORG_A)).json()
    rest = await client.get(
        members_of(group["id"]), params={"cursor": page["next_cursor"]}, headers=ORG_A
    )
    assert [m["customer_id"] for m in rest.json()["customers"]] == ids[10:]
    assert rest.json()["next_cursor"] is None
    empty = await create(client, "Empty")
    assert (await client.get(members_of(empty["id"]), headers=ORG_A)).json() == {
        "customers": [],
        "next_cursor": None,
    }


async def test_remove_many_and_delete_one(client: httpx.AsyncClient, kafka: KafkaProbe) -> None:
    group = await create(client, "Shrinking")
    await add(client, group["id"], "cus_1", "cus_2", "cus_3", "cus/4 x")

    removed = await remove(client, group["id"], "cus_1", "cus_9", "cus_1")

    assert removed.status_code == 200, removed.text
    assert set(removed.json()) == {"customer_group"}
    after_remove = removed.json()["customer_group"]
    assert (after_remove["version"], after_remove["customer_count"]) == (3, 3)
    assert removed.headers["etag"] == '"3"'
    deleted = await client.delete(one_member(group["id"], "cus_2"), headers=ORG_A)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert deleted.headers["etag"] == '"4"'
    slash = await client.delete(one_member(group["id"], "cus/4 x"), headers=ORG_A)
    assert (slash.status_code, slash.headers["etag"]) == (204, '"5"')
    assert await member_ids(client, group["id"]) == ["cus_3"]
    not_a_member = await client.delete(one_member(group["id"], "cus_2"), headers=ORG_A)
    assert (not_a_member.status_code, not_a_member.headers["etag"]) == (204, '"5"')
    assert (await group_now(client, group["id"]))["customer_count"] == 1

    events = await kafka.wait_events(5)
    changes = [
        (dict(e.headers)["ce_type"], json.loads(e.value).get("customer_ids")) for e in events[2:]
    ]
    assert changes == [
        (b"group.customers_removed", ["cus_1"]),
        (b"group.customers_removed", ["cus_2"]),
        (b"group.customers_removed", ["cus/4 x"]),
    ]


async def test_a_customers_groups_are_the_live_groups_of_the_callers_organization(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    groups = [await create(client, f"Group {i}") for i in range(4)]
    for group in groups:
        await add(client, group["id"], "cus_shared", f"cus_only_{group['id']}")
    gone = groups.pop(2)
    assert (await client.delete(f"{GROUPS}/{gone['id']}", headers=ORG_A)).status_code == 204
    other = await client.post(GROUPS, json={"name": "Group 0"}, headers=ORG_B)
    other_id = other.json()["customer_group"]["id"]
    added = await client.post(
        members_of(other_id), json={"customer_ids": ["cus_shared"]}, headers=ORG_B
    )
    assert added.status_code == 200, added.text
    # Not purged yet: the read itself must leave the deleted group out.
    assert (
        await pool.fetchval("SELECT count(*) FROM group_members WHERE group_id = $1", gone["id"])
        == 2
    )

    expected = sorted([await group_now(client, g["id"]) for g in groups], key=lambda g: g["id"])
    for limit in (1, 2, 3, 50):
        listed = await follow(
            client, groups_of("cus_shared"), "customer_groups", ORG_A, limit=limit
        )
        assert listed == expected, limit
    only = await follow(client, groups_of(f"cus_only_{gone['id']}"), "customer_groups", ORG_A)
    assert only == []
    as_b = await follow(client, groups_of("cus_shared"), "customer_groups", ORG_B)
    assert [g["id"] for g in as_b] == [other_id]
    assert await follow(client, groups_of("cus_nobody"), "customer_groups", ORG_A) == []
    deleted_members = await client.get(members_of(gone["id"]), headers=ORG_A)
    assert deleted_members.status_code == 404
    assert deleted_members.json() == error(404, "Group not found", {"group_id": gone["id"]})
    assert (await add(client, gone["id"], "cus_new")).status_code == 404


async def test_if_match_guards_every_membership_write(client: httpx.AsyncClient) -> None:
    group = await create(client, "Guarded")
    first = await add(client, group["id"], "cus_1", "cus_2", **{"If-Match": '"1"'})
    assert first.status_code == 200, first.text
    conflict = error(409, "Version conflict", {"expected_version": 1, "current_version": 2})

    stale = [
        await add(client, group["id"], "cus_3", **{"If-Match": '"1"'}),
        await remove(client, group["id"], "cus_1", **{"If-Match": "1"}),
        await client.delete(
            one_member(group["id"], "cus_2"), headers={**ORG_A, "If-Match": 'W/"1"'}
        ),
    ]

    for response in stale:
        assert response.status_code == 409, response.text
        assert response.json() == conflict
    assert await group_now(client, group["id"]) == first.json()["customer_group"]
    assert await member_ids(client, group["id"]) == ["cus_1", "cus_2"]
    current = await remove(client, group["id"], "cus_1", **{"If-Match": '"2"'})
    assert current.status_code == 200
    assert current.headers["etag"] == '"3"'


async def test_an_idempotency_key_repeated_gets_the_first_answer_and_changes_nothing(
    settings: Settings, client: httpx.AsyncClient, kafka: KafkaProbe, pool: asyncpg.Pool
) -> None:
    group = await create(client, "Once")
    key = {"Idempotency-Key": "add-once-1"}

    first = await add(client, group["id"], "cus_1", "cus_2", **key)
    await remove(client, group["id"], "cus_1")
    replay = await add(client, group["id"], "cus_1", "cus_2", **key)

    assert first.status_code == replay.status_code == 200
    assert replay.json() == first.json()
    assert replay.headers["etag"] == first.headers["etag"] == '"2"'
    assert await member_ids(client, group["id"]) == ["cus_2"]
    assert (await group_now(client, group["id"]))["version"] == 3
    reused = await add(client, group["id"], "cus_3", **key)
    assert reused.status_code == 409
    assert reused.json() == error(
        409, "Command id already used with a different payload", {"command_id": "add-once-1"}
    )

    delete_key = {**ORG_A, "Idempotency-Key": "delete-one-1"}
    url = one_member(group["id"], "cus_2")
    assert (await client.delete(url, headers=delete_key)).status_code == 204
    await add(client, group["id"], "cus_2")
    assert (await client.delete(url, headers=delete_key)).status_code == 204
    assert await member_ids(client, group["id"]) == ["cus_2"]
    await kafka.wait_for(
        settings.topic_results, lambda _: len(kafka.results_for("add-once-1")) >= 2
    )
    first_result, replayed_result = kafka.results_for("add-once-1")[:2]
    assert replayed_result == first_result
    assert first_result["customers"] == {"changed": 2, "unchanged": 0}
    # create, add, remove, delete one, add again: replays wrote no event.
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 5


async def test_another_organizations_group_is_not_found_and_untouched(
    client: httpx.AsyncClient,
) -> None:
    group = await create(client, "Private")
    await add(client, group["id"], "cus_1")
    before = await group_now(client, group["id"])
    not_found = error(404, "Group not found", {"group_id": group["id"]})

    responses = [
        await client.get(members_of(group["id"]), headers=ORG_B),
        await client.post(members_of(group["id"]), json={"customer_ids": ["x"]}, headers=ORG_B),
        await client.post(
            f"{members_of(group['id'])}/remove", json={"customer_ids": ["cus_1"]}, headers=ORG_B
        ),
        await client.delete(one_member(group["id"], "cus_1"), headers=ORG_B),
    ]

    for response in responses:
        assert response.status_code == 404, response.text
        assert response.json() == not_found
    assert await follow(client, groups_of("cus_1"), "customer_groups", ORG_B) == []
    assert await group_now(client, group["id"]) == before
    assert await member_ids(client, group["id"]) == ["cus_1"]
    unknown = await client.get(members_of("grp_unknown"), headers=ORG_A)
    assert unknown.json() == error(404, "Group not found", {"group_id": "grp_unknown"})
