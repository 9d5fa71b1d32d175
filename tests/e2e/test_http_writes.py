from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from service.bootstrap import Role, lifespan
from service.config import Settings
from tests.e2e.http_support import GROUPS, ORG_A, create, running_app
from tests.support import KafkaProbe, wait_until_assigned


@pytest.fixture
async def client(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings) as client:
        yield client


def error(code: int, message: str, details: object) -> dict[str, object]:
    return {"code": code, "error": message, "details": details}


async def test_create_returns_the_group_and_publishes_its_event(
    client: httpx.AsyncClient, kafka: KafkaProbe
) -> None:
    response = await client.post(
        GROUPS,
        json={"name": "  VIP Customers ", "description": "Premium", "platform_id": "123"},
        headers={**ORG_A, "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )

    assert response.status_code == 201, response.text
    group = response.json()["customer_group"]
    assert group["name"] == "VIP Customers"
    assert (group["description"], group["platform_id"], group["version"]) == ("Premium", "123", 1)
    assert group["organization_id"] == "org_a"
    assert response.headers["etag"] == '"1"'
    assert response.headers["location"] == f"{GROUPS}/{group['id']}"
    [event] = await kafka.wait_events(1)
    assert json.loads(event.value) == group
    assert dict(event.headers)["traceparent"].startswith(b"00-0af7651916cd43dd")


async def test_create_rejections_have_the_linkit_error_bodies(
    client: httpx.AsyncClient,
) -> None:
    await create(client, "VIP Customers")
    duplicate = await client.post(GROUPS, json={"name": "vip customers"}, headers=ORG_A)
    assert duplicate.status_code == 409
    assert duplicate.json() == error(
        409, "Group with same name already exists", {"name": "vip customers"}
    )
    no_name = await client.post(GROUPS, json={"description": "x"}, headers=ORG_A)
    assert no_name.status_code == 422
    assert no_name.json() == error(422, "Validation error", "Name is required")
    too_long = await client.post(GROUPS, json={"name": "x" * 101}, headers=ORG_A)
    assert too_long.json() == error(422, "Validation error", "Name must be at most 100 characters")


async def test_invalid_bodies_are_422_and_nothing_is_sent(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    commands = KafkaProbe(settings)
    await commands.start(settings.topic_commands)
    try:
        bad = {
            b"{": "Invalid JSON",
            b"[]": "The body must be a JSON object",
            b"": "A JSON body is required",
            b'{"name": 5}': "name: Input should be a valid string",
            b'{"name": "a", "color": "red"}': "color: Extra inputs are not permitted",
            b'{"name": "   "}': "Name is required",
            b'{"name": "a", "description": "' + b"d" * 501 + b'"}': (
                "Description must be at most 500 characters"
            ),
            b'{"name": "\\ud800"}': (
                "name: Input should be valid Unicode text, without lone surrogates"
            ),
            b'{"name": "a", "platform_id": "x\\udfff"}': (
                "platform_id: Input should be valid Unicode text, without lone surrogates"
            ),
        }
        for body, details in bad.items():
            response = await client.post(
                GROUPS, content=body, headers={**ORG_A, "content-type": "application/json"}
            )
            assert response.status_code == 422, body
            assert response.json() == error(422, "Validation error", details), body
        await create(client, "The only one sent")
        records = await commands.wait_for(settings.topic_commands, lambda r: len(r) >= 1)
        assert [json.loads(r.value)["name"] for r in records] == ["The only one sent"]
    finally:
        await commands.stop()


async def test_put_replaces_every_field(client: httpx.AsyncClient) -> None:
    group = await create(client, "Old", description="Old text", platform_id="p-1")
    url = f"{GROUPS}/{group['id']}"

    response = await client.put(url, json={"name": "New"}, headers={**ORG_A, "If-Match": '"1"'})

    assert response.status_code == 200, response.text
    replaced = response.json()["customer_group"]
    assert (replaced["name"], replaced["description"], replaced["platform_id"]) == (
        "New",
        None,
        None,
    )
    assert replaced["version"] == 2
    assert response.headers["etag"] == '"2"'
    assert (await client.get(url, headers=ORG_A)).json()["customer_group"] == replaced
    no_name = await client.put(url, json={"description": "x"}, headers=ORG_A)
    assert no_name.json() == error(422, "Validation error", "Name is required")
    missing = await client.put(f"{GROUPS}/grp_nope", json={"name": "x"}, headers=ORG_A)
    assert missing.status_code == 404
    assert missing.json() == error(404, "Group not found", {"group_id": "grp_nope"})


async def test_patch_changes_only_the_fields_sent(client: httpx.AsyncClient) -> None:
    group = await create(client, "Keep me", description="Old", platform_id="p-1")
    url = f"{GROUPS}/{group['id']}"

    response = await client.patch(url, json={"description": None}, headers=ORG_A)

    assert response.status_code == 200, response.text
    patched = response.json()["customer_group"]
    assert (patched["name"], patched["description"], patched["platform_id"]) == (
        "Keep me",
        None,
        "p-1",
    )
    assert patched["version"] == 2
    unchanged = await client.patch(url, json={}, headers=ORG_A)
    assert unchanged.status_code == 200
    assert unchanged.json()["customer_group"]["version"] == 2
    null_name = await client.patch(url, json={"name": None}, headers=ORG_A)
    assert null_name.json() == error(422, "Validation error", "Name cannot be null")


async def test_if_match_guards_the_version(client: httpx.AsyncClient) -> None:
    group = await create(client, "Guarded")
    url = f"{GROUPS}/{group['id']}"
    first = await client.patch(url, json={"name": "Guarded 2"}, headers={**ORG_A, "If-Match": "1"})
    assert first.status_code == 200

    stale = await client.patch(
        url, json={"name": "Guarded 3"}, headers={**ORG_A, "If-Match": '"1"'}
    )
    assert stale.status_code == 409
    assert stale.json() == error(
        409, "Version conflict", {"expected_version": 1, "current_version": 2}
    )
    stale_delete = await client.delete(url, headers={**ORG_A, "If-Match": '"1"'})
    assert stale_delete.status_code == 409
    garbage = await client.patch(url, json={}, headers={**ORG_A, "If-Match": "v1"})
    assert garbage.json() == error(
        422, "Validation error", 'If-Match must be a group version, e.g. "3"'
    )
    assert (await client.get(url, headers=ORG_A)).headers["etag"] == '"2"'


async def test_delete_then_the_group_is_gone_and_its_name_free(
    client: httpx.AsyncClient, kafka: KafkaProbe
) -> None:
    group = await create(client, "Short-lived")
    url = f"{GROUPS}/{group['id']}"

    response = await client.delete(url, headers={**ORG_A, "If-Match": '"1"'})

    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get(url, headers=ORG_A)).status_code == 404
    again = await client.delete(url, headers=ORG_A)
    assert again.status_code == 404
    assert again.json() == error(404, "Group not found", {"group_id": group["id"]})
    reused = await create(client, "Short-lived")
    assert reused["id"] != group["id"]
    events = await kafka.wait_events(3)
    types = {(dict(e.headers)["ce_subject"], dict(e.headers)["ce_type"]) for e in events}
    assert types == {
        (group["id"].encode(), b"group.created"),
        (group["id"].encode(), b"group.deleted"),
        (reused["id"].encode(), b"group.created"),
    }


async def test_idempotency_key_replay_returns_the_first_result(
    settings: Settings, client: httpx.AsyncClient, kafka: KafkaProbe, pool: asyncpg.Pool
) -> None:
    headers = {**ORG_A, "Idempotency-Key": "create-vip-1"}
    first = await client.post(GROUPS, json={"name": "VIP"}, headers=headers)
    replay = await client.post(GROUPS, json={"name": "VIP"}, headers=headers)

    assert first.status_code == replay.status_code == 201
    assert replay.json() == first.json()
    listed = (await client.get(GROUPS, headers=ORG_A)).json()["customer_groups"]
    assert [g["id"] for g in listed] == [first.json()["customer_group"]["id"]]
    other_body = await client.post(GROUPS, json={"name": "Other"}, headers=headers)
    assert other_body.status_code == 409
    assert other_body.json() == error(
        409, "Command id already used with a different payload", {"command_id": "create-vip-1"}
    )

    too_long = await client.post(
        GROUPS, json={"name": "VIP"}, headers={**ORG_A, "Idempotency-Key": "k" * 129}
    )
    assert too_long.json() == error(
        422, "Validation error", "Idempotency-Key must be 1-128 characters"
    )

    url = f"{GROUPS}/{first.json()['customer_group']['id']}"
    delete_headers = {**ORG_A, "Idempotency-Key": "delete-vip-1"}
    assert (await client.delete(url, headers=delete_headers)).status_code == 204
    assert (await client.delete(url, headers=delete_headers)).status_code == 204
    await kafka.wait_for(
        settings.topic_results, lambda _: len(kafka.results_for("delete-vip-1")) >= 2
    )
    first_result, replayed_result = kafka.results_for("delete-vip-1")
    assert replayed_result == first_result
    # Replays change nothing: one event for the create, one for the delete.
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 2


async def test_without_a_result_in_time_the_command_id_comes_back_as_202(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    http_only = settings.model_copy(update={"http_command_timeout_s": 2.0})
    headers = {**ORG_A, "Idempotency-Key": "slow-create"}
    async with running_app(http_only, frozenset({Role.HTTP})) as client:
        queued = await client.post(GROUPS, json={"name": "Later"}, headers=headers)
        assert queued.status_code == 202
        assert queued.json() == {"command_id": "slow-create"}
        assert (await client.get(GROUPS, headers=ORG_A)).json()["customer_groups"] == []

        async with lifespan(settings, frozenset({Role.CONSUMER})) as consumer:
            await wait_until_assigned(consumer)
            retried = await client.post(GROUPS, json={"name": "Later"}, headers=headers)

        assert retried.status_code == 201, retried.text
        listed = (await client.get(GROUPS, headers=ORG_A)).json()["customer_groups"]
        assert listed == [retried.json()["customer_group"]]
