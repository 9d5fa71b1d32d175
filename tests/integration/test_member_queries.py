"""The reads of members and of a customer's groups, in real PostgreSQL: order, keyset pages,
tenants, deleted groups whose member rows are not purged yet, and the plans they run."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from service.adapters.postgres import members
from service.domain.model import name_key

T0 = datetime(2026, 11, 22, 10, 30, tzinfo=UTC)

INSERT_GROUP = """
INSERT INTO customer_groups (id, organization_id, name, name_key, description, platform_id,
                             version, created_at, updated_at, deleted_at, customer_count)
VALUES ($1, $2, $1, $3, NULL, NULL, 1, $4, $4, $5, $6)
"""

INSERT_MEMBERS = """
INSERT INTO group_members (organization_id, group_id, customer_id, added_at)
SELECT $1, $2, c, $4 FROM unnest($3::text[]) AS c
"""


async def group(
    pool: asyncpg.Pool,
    group_id: str,
    *customer_ids: str,
    org: str = "org_a",
    deleted: bool = False,
) -> None:
    deleted_at = T0 if deleted else None
    await pool.execute(
        INSERT_GROUP, group_id, org, name_key(group_id), T0, deleted_at, len(customer_ids)
    )
    await pool.execute(INSERT_MEMBERS, org, group_id, list(customer_ids), T0)


async def all_members(pool: asyncpg.Pool, org: str, group_id: str, limit: int) -> list[str]:
    seen: list[str] = []
    after = None
    while True:
        page = await members.members(pool, org, group_id, limit=limit, after=after)
        assert page is not None
        seen += [m.customer_id for m in page.items]
        if page.next is None:
            return seen
        assert len(page.items) == limit
        assert page.next != after, "the page did not move on"
        after = page.next


async def all_groups(pool: asyncpg.Pool, org: str, customer_id: str, limit: int) -> list[str]:
    seen: list[str] = []
    after = None
    while True:
        page = await members.customer_groups(pool, org, customer_id, limit=limit, after=after)
        seen += [g.id for g in page.items]
        if page.next is None:
            return seen
        assert len(page.items) == limit
        assert page.next != after, "the page did not move on"
        after = page.next


async def test_members_in_customer_id_order_by_keyset_pages(pool: asyncpg.Pool) -> None:
    ids = ["cus_b", "cus_a", "cus_c", "cus_a1", "cus_0"]
    await group(pool, "grp_1", *ids)
    await group(pool, "grp_2", "cus_x")

    for limit in range(1, 7):
        assert await all_members(pool, "org_a", "grp_1", limit) == sorted(ids), limit
    page = await members.members(pool, "org_a", "grp_1", limit=2, after="cus_a")
    assert page is not None
    assert [(m.customer_id, m.added_at) for m in page.items] == [("cus_a1", T0), ("cus_b", T0)]
    assert page.next == "cus_b"
    exact = await members.members(pool, "org_a", "grp_1", limit=5)
    assert exact is not None
    assert exact.next is None
    past_the_end = await members.members(pool, "org_a", "grp_1", limit=5, after="cus_z")
    assert past_the_end == members.Page([], None)


async def test_members_only_of_a_live_group_of_the_organization(pool: asyncpg.Pool) -> None:
    await group(pool, "grp_live", "cus_1")
    await group(pool, "grp_empty")
    # Deleted, its member rows not purged yet.
    await group(pool, "grp_gone", "cus_1", "cus_2", deleted=True)
    await group(pool, "grp_theirs", "cus_1", org="org_b")

    assert await members.members(pool, "org_a", "grp_empty", limit=10) == members.Page([], None)
    assert await members.members(pool, "org_a", "grp_gone", limit=10) is None
    assert await members.members(pool, "org_a", "grp_gone", limit=10, after="cus_1") is None
    assert await members.members(pool, "org_a", "grp_theirs", limit=10) is None
    assert await members.members(pool, "org_b", "grp_live", limit=10) is None
    assert await members.members(pool, "org_a", "grp_missing", limit=10) is None
    assert await all_members(pool, "org_b", "grp_theirs", 10) == ["cus_1"]


async def test_a_customers_live_groups_of_the_organization_in_id_order(
    pool: asyncpg.Pool,
) -> None:
    await group(pool, "grp_c", "cus_1", "cus_2")
    await group(pool, "grp_a", "cus_1")
    await group(pool, "grp_b", "cus_2")
    await group(pool, "grp_d", "cus_1", deleted=True)
    await group(pool, "grp_0", "cus_1", deleted=True)
    await group(pool, "grp_e", "cus_1")
    await group(pool, "grp_z", "cus_1", org="org_b")

    for limit in range(1, 6):
        assert await all_groups(pool, "org_a", "cus_1", limit) == ["grp_a", "grp_c", "grp_e"]
    page = await members.customer_groups(pool, "org_a", "cus_1", limit=1, after="grp_a")
    assert [g.id for g in page.items] == ["grp_c"]
    assert page.next == "grp_c"
    [c] = page.items
    assert (c.organization_id, c.customer_count, c.deleted_at) == ("org_a", 2, None)
    assert await all_groups(pool, "org_b", "cus_1", 10) == ["grp_z"]
    assert await all_groups(pool, "org_a", "cus_unknown", 10) == []
    assert await all_groups(pool, "org_b", "cus_2", 10) == []


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in plan_nodes(child))]


async def plan_of(pool: asyncpg.Pool, statement: str, *parameters: Any) -> list[dict[str, Any]]:
    explained = await pool.fetchval(f"EXPLAIN (FORMAT JSON) {statement}", *parameters)
    document = explained if isinstance(explained, list) else orjson.loads(explained)
    return plan_nodes(document[0]["Plan"])


# Five organizations of 400 groups, every seventh deleted; each group has 25 members and
# grp_1 5,000 more: large enough that a scan or a sort would cost the planner more.
BULK_GROUPS = """
INSERT INTO customer_groups (id, organization_id, name, name_key, description, platform_id,
                             version, created_at, updated_at, deleted_at, customer_count)
SELECT 'grp_' || i, 'org_' || (i % 5), 'grp_' || i, 'grp_' || i, NULL, NULL, 1, $1, $1,
       CASE WHEN i % 7 = 0 THEN $1::timestamptz END, 25
FROM generate_series(1, 2000) AS i
"""

BULK_MEMBERS = """
INSERT INTO group_members (organization_id, group_id, customer_id, added_at)
SELECT 'org_' || (g % 5), 'grp_' || g, 'cus_' || c, $1::timestamptz
FROM generate_series(1, 2000) AS g, generate_series(1, 25) AS c
UNION ALL
SELECT 'org_1', 'grp_1', 'cus_big_' || c, $1 FROM generate_series(1, 5000) AS c
"""


async def test_the_reads_probe_indexes_and_neither_scan_nor_sort(pool: asyncpg.Pool) -> None:
    await pool.execute(BULK_GROUPS, T0)
    await pool.execute(BULK_MEMBERS, T0)
    await pool.execute("ANALYZE customer_groups, group_members")

    plans = {
        "members": await plan_of(pool, members.MEMBERS_PAGE, "org_1", "grp_1", "cus_3", 51),
        "first members": await plan_of(pool, members.MEMBERS_PAGE, "org_1", "grp_1", None, 51),
        "live group": await plan_of(pool, members.LIVE_GROUP, "org_1", "grp_1"),
        "groups": await plan_of(
            pool, members.CUSTOMER_GROUPS_PAGE, "org_1", "cus_3", "grp_1001", 51
        ),
        "first groups": await plan_of(
            pool, members.CUSTOMER_GROUPS_PAGE, "org_1", "cus_3", None, 51
        ),
    }
    for name, nodes in plans.items():
        kinds = [n["Node Type"] for n in nodes]
        assert "Seq Scan" not in kinds, (name, kinds)
        assert "Sort" not in kinds, (name, kinds)
    indexes = {name: {n.get("Index Name") for n in nodes} for name, nodes in plans.items()}
    for name in ("members", "first members"):
        assert {"group_members_pkey", "customer_groups_pkey"} <= indexes[name], indexes[name]
    assert "customer_groups_pkey" in indexes["live group"]
    for name in ("groups", "first groups"):
        assert {"group_members_customer", "customer_groups_pkey"} <= indexes[name], indexes[name]
