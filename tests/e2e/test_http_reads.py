from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from service.config import Settings
from tests.e2e.http_support import GROUPS, ORG_A, ORG_B, create, millis, running_app


@pytest.fixture
async def client(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings) as client:
        yield client


async def create_many(client: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(create(client, f"Group {i:02}") for i in range(count))))


async def list_page(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get(GROUPS, params=params, headers=ORG_A)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def follow_cursor(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    body = await list_page(client, **params)
    while True:
        seen += body["customer_groups"]
        if body["next_cursor"] is None:
            return seen
        body = await list_page(client, **params, cursor=body["next_cursor"])


def order_key(group: dict[str, Any]) -> tuple[str, str]:
    return group["updated_at"], group["id"]


async def test_paging_by_page_returns_each_group_once(client: httpx.AsyncClient) -> None:
    created = await create_many(client, 25)
    pages = [await list_page(client, page=n, limit=10) for n in (1, 2, 3, 4)]

    assert [len(p["customer_groups"]) for p in pages] == [10, 10, 5, 0]
    assert [(p["page"], p["limit"]) for p in pages] == [(1, 10), (2, 10), (3, 10), (4, 10)]
    listed = [g for p in pages for g in p["customer_groups"]]
    assert sorted(g["id"] for g in listed) == sorted(g["id"] for g in created)
    assert listed == sorted(listed, key=order_key)
    assert pages[2]["next_cursor"] is None
    default = await list_page(client)
    assert (default["page"], default["limit"], len(default["customer_groups"])) == (1, 20, 20)


async def test_paging_by_cursor_returns_each_group_once(client: httpx.AsyncClient) -> None:
    created = await create_many(client, 25)
    listed = await follow_cursor(client, limit=7)

    assert len(listed) == 25
    assert {g["id"] for g in listed} == {g["id"] for g in created}
    assert listed == sorted(listed, key=order_key)


async def test_cursor_paging_under_concurrent_writes_skips_nothing(
    client: httpx.AsyncClient,
) -> None:
    created = await create_many(client, 25)
    first = await list_page(client, limit=10)
    seen_first = [g["id"] for g in first["customer_groups"]]
    not_yet_seen = sorted({g["id"] for g in created} - set(seen_first))
    # One group already listed and one not yet listed change while the client pages on.
    for group_id in (seen_first[0], not_yet_seen[0]):
        response = await client.patch(
            f"{GROUPS}/{group_id}", json={"description": "changed"}, headers=ORG_A
        )
        assert response.status_code == 200, response.text
    rest = await follow_cursor_from(client, first["next_cursor"], limit=10)

    rest_ids = [g["id"] for g in rest]
    assert set(seen_first) | set(rest_ids) == {g["id"] for g in created}
    assert len(rest_ids) == len(set(rest_ids))
    # The changed ones come (again) at the end, with their new version.
    assert {g["id"] for g in rest[-2:]} == {seen_first[0], not_yet_seen[0]}
    assert all(g["version"] == 2 for g in rest[-2:])


async def follow_cursor_from(
    client: httpx.AsyncClient, cursor: str, **params: Any
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    next_cursor: str | None = cursor
    while next_cursor is not None:
        body = await list_page(client, **params, cursor=next_cursor)
        seen += body["customer_groups"]
        next_cursor = body["next_cursor"]
    return seen


async def test_updated_at_bounds_are_inclusive_milliseconds(client: httpx.AsyncClient) -> None:
    # One at a time, so that they are changed in different milliseconds.
    groups = [await create(client, f"Group {i:02}") for i in range(25)]
    low, high = millis(groups[5]["updated_at"]), millis(groups[18]["updated_at"])
    assert low < high

    async def window(start: int | None, end: int | None) -> set[str]:
        params = {
            k: v
            for k, v in {"updated_at_min": start, "updated_at_max": end}.items()
            if v is not None
        }
        return {g["id"] for g in await follow_cursor(client, limit=100, **params)}

    def expected(start: int, end: int) -> set[str]:
        return {g["id"] for g in groups if start <= millis(g["updated_at"]) <= end}

    inside = await window(low, high)
    assert inside == expected(low, high)
    assert {groups[5]["id"], groups[18]["id"]} <= inside
    narrower = await window(low + 1, high - 1)
    assert narrower == expected(low + 1, high - 1)
    assert groups[5]["id"] not in narrower
    assert groups[18]["id"] not in narrower
    assert await window(None, high) == expected(0, high)
    assert await window(low, None) == expected(low, 2**62)


async def test_a_cursor_alone_keeps_its_listings_filters(client: httpx.AsyncClient) -> None:
    # One at a time, so that they are changed in different milliseconds.
    groups = [await create(client, f"Group {i:02}") for i in range(12)]
    low, high = millis(groups[3]["updated_at"]), millis(groups[8]["updated_at"])
    inside = [g["id"] for g in groups if low <= millis(g["updated_at"]) <= high]
    assert 0 < len(inside) < len(groups) - 3
    body = await list_page(client, limit=2, updated_at_min=low, updated_at_max=high)
    seen = [g["id"] for g in body["customer_groups"]]
    while body["next_cursor"] is not None:
        body = await list_page(client, limit=2, cursor=body["next_cursor"])
        seen += [g["id"] for g in body["customer_groups"]]
    assert seen == inside

    first = await list_page(client, limit=2, updated_at_max=high)
    rest = await list_page(
        client, limit=100, cursor=first["next_cursor"], updated_at_max=high + 10_000
    )
    assert [g["id"] for g in rest["customer_groups"]] == [g["id"] for g in groups[2:]], (
        "parameters sent with a cursor replace its own"
    )


async def test_deleted_groups_are_listed_only_when_asked(client: httpx.AsyncClient) -> None:
    kept, gone = await create(client, "Kept"), await create(client, "Gone")
    response = await client.delete(f"{GROUPS}/{gone['id']}", headers=ORG_A)
    assert response.status_code == 204

    assert [g["id"] for g in await follow_cursor(client)] == [kept["id"]]
    everything = await follow_cursor(client, include_deleted="true")
    assert [g["id"] for g in everything] == [kept["id"], gone["id"]]
    assert everything[1]["deleted_at"] is not None
    assert (await client.get(f"{GROUPS}/{gone['id']}", headers=ORG_A)).status_code == 404
    fetched = await client.get(f"{GROUPS}/{gone['id']}?include_deleted=true", headers=ORG_A)
    assert fetched.status_code == 200
    assert fetched.json()["customer_group"]["version"] == 2


async def test_fetch_returns_the_group_with_its_version_as_etag(
    client: httpx.AsyncClient,
) -> None:
    group = await create(client, "VIP Customers", description="Best", platform_id="123")
    response = await client.get(f"{GROUPS}/{group['id']}", headers=ORG_A)

    assert response.status_code == 200
    assert response.headers["etag"] == '"1"'
    assert response.json() == {"customer_group": group}
    assert group["name"] == "VIP Customers"
    assert group["organization_id"] == "org_a"


async def test_another_organizations_groups_are_invisible(client: httpx.AsyncClient) -> None:
    mine = await create(client, "Org A group")
    response = await client.post(GROUPS, json={"name": "Org B group"}, headers=ORG_B)
    assert response.status_code == 201
    theirs = response.json()["customer_group"]

    response = await client.get(f"{GROUPS}/{mine['id']}", headers=ORG_B)
    assert response.status_code == 404
    assert response.json() == {
        "code": 404,
        "error": "Group not found",
        "details": {"group_id": mine["id"]},
    }
    listed_b = await client.get(GROUPS, params={"include_deleted": "true"}, headers=ORG_B)
    assert [g["id"] for g in listed_b.json()["customer_groups"]] == [theirs["id"]]
    assert [g["id"] for g in await follow_cursor(client)] == [mine["id"]]
    for method in ("PATCH", "PUT"):
        response = await client.request(
            method, f"{GROUPS}/{mine['id']}", json={"name": "Taken over"}, headers=ORG_B
        )
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "Group not found"
    assert (await client.delete(f"{GROUPS}/{mine['id']}", headers=ORG_B)).status_code == 404
    unchanged = await client.get(f"{GROUPS}/{mine['id']}", headers=ORG_A)
    assert unchanged.json()["customer_group"] == mine


async def test_requests_without_a_known_token_are_401(client: httpx.AsyncClient) -> None:
    unknown = [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic token-a"},
        {"Authorization": "token-a"},
    ]
    for headers in unknown:
        for method, path in [("GET", GROUPS), ("GET", f"{GROUPS}/grp_1"), ("POST", GROUPS)]:
            response = await client.request(method, path, json={"name": "x"}, headers=headers)
            assert response.status_code == 401, (headers, method, path)
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json() == {
                "code": 401,
                "error": "Unauthorized",
                "details": "A valid bearer token is required",
            }


async def test_bad_list_parameters_are_422(client: httpx.AsyncClient) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"limit": 101}, "limit: Input should be less than or equal to 100"),
        ({"limit": 0}, "limit: Input should be greater than or equal to 1"),
        ({"page": 0}, "page: Input should be greater than or equal to 1"),
        ({"cursor": "not-a-cursor"}, "Invalid cursor"),
        ({"cursor": "MTox", "page": 2}, "Use either page or cursor, not both"),
        # "0:\x00": a group id PostgreSQL would refuse to take as a parameter.
        ({"cursor": "MDoA"}, "Invalid cursor"),
        (
            {"updated_at_min": "yesterday"},
            "updated_at_min: Input should be a valid integer, unable to parse string as an integer",
        ),
    ]
    for params, details in cases:
        response = await client.get(GROUPS, params=params, headers=ORG_A)
        assert response.status_code == 422, params
        assert response.json() == {"code": 422, "error": "Validation error", "details": details}
