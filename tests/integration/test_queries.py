from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from service.adapters.postgres import queries
from service.adapters.postgres.queries import (
    Cursor,
    Filters,
    Position,
    decode_cursor,
    encode_cursor,
)
from service.domain.model import name_key

T0 = datetime(2026, 11, 22, 10, 30, tzinfo=UTC)

INSERT = """
INSERT INTO customer_groups (id, organization_id, name, name_key, description, platform_id,
                             version, created_at, updated_at, deleted_at)
VALUES ($1, $2, $3, $4, NULL, NULL, 1, $5, $5, $6)
"""


async def add(
    pool: asyncpg.Pool,
    group_id: str,
    updated_at: datetime,
    org: str = "org_a",
    deleted: bool = False,
) -> None:
    deleted_at = updated_at if deleted else None
    await pool.execute(INSERT, group_id, org, group_id, name_key(group_id), updated_at, deleted_at)


async def all_by_cursor(pool: asyncpg.Pool, org: str, limit: int) -> list[str]:
    seen: list[str] = []
    after = None
    while True:
        page = await queries.list_groups(pool, org, limit=limit, after=after)
        seen += [g.id for g in page.groups]
        if page.next is None:
            return seen
        after = decode_cursor(encode_cursor(Cursor(page.next))).position


async def test_order_is_updated_at_then_id_and_scoped_to_the_organization(
    pool: asyncpg.Pool,
) -> None:
    # Ties on updated_at are broken by id.
    await add(pool, "grp_c", T0)
    await add(pool, "grp_a", T0)
    await add(pool, "grp_b", T0 + timedelta(microseconds=1))
    await add(pool, "grp_0", T0 + timedelta(seconds=1))
    await add(pool, "grp_other", T0, org="org_b")
    expected = ["grp_a", "grp_c", "grp_b", "grp_0"]

    for limit in (1, 2, 3, 4, 5):
        assert await all_by_cursor(pool, "org_a", limit) == expected
    by_page = [
        g.id
        for offset in (0, 2)
        for g in (await queries.list_groups(pool, "org_a", limit=2, offset=offset)).groups
    ]
    assert by_page == expected
    assert await all_by_cursor(pool, "org_b", 10) == ["grp_other"]


async def test_next_is_given_only_when_more_rows_follow(pool: asyncpg.Pool) -> None:
    for i in range(3):
        await add(pool, f"grp_{i}", T0 + timedelta(seconds=i))
    first = await queries.list_groups(pool, "org_a", limit=2)
    assert first.next == Position(T0 + timedelta(seconds=1), "grp_1")
    last = await queries.list_groups(pool, "org_a", limit=2, after=first.next)
    assert [g.id for g in last.groups] == ["grp_2"]
    assert last.next is None
    exact = await queries.list_groups(pool, "org_a", limit=3)
    assert exact.next is None


async def test_a_group_changed_behind_the_cursor_comes_again_and_none_is_skipped(
    pool: asyncpg.Pool,
) -> None:
    for i in range(6):
        await add(pool, f"grp_{i}", T0 + timedelta(seconds=i))
    first = await queries.list_groups(pool, "org_a", limit=3)
    # One group already seen and one not yet seen change while the client pages.
    later = T0 + timedelta(minutes=5)
    await pool.execute("UPDATE customer_groups SET updated_at = $1 WHERE id = 'grp_1'", later)
    await pool.execute(
        "UPDATE customer_groups SET updated_at = $1 WHERE id = 'grp_4'",
        later + timedelta(seconds=1),
    )
    rest: list[str] = []
    after = first.next
    while after is not None:
        page = await queries.list_groups(pool, "org_a", limit=3, after=after)
        rest += [g.id for g in page.groups]
        after = page.next
    assert [g.id for g in first.groups] == ["grp_0", "grp_1", "grp_2"]
    assert rest == ["grp_3", "grp_5", "grp_1", "grp_4"]


async def test_updated_bounds_are_inclusive_to_the_microsecond(pool: asyncpg.Pool) -> None:
    us = timedelta(microseconds=1)
    await add(pool, "grp_before", T0 - us)
    await add(pool, "grp_first", T0)
    await add(pool, "grp_last", T0 + 10 * us)
    await add(pool, "grp_after", T0 + 11 * us)

    async def ids(start: datetime | None, end: datetime | None) -> list[str]:
        page = await queries.list_groups(pool, "org_a", limit=10, filters=Filters(start, end))
        return [g.id for g in page.groups]

    assert await ids(T0, T0 + 10 * us) == ["grp_first", "grp_last"]
    assert await ids(T0 + us, T0 + 9 * us) == []
    assert await ids(None, T0) == ["grp_before", "grp_first"]
    assert await ids(T0 + 10 * us, None) == ["grp_last", "grp_after"]


async def test_deleted_groups_only_when_asked(pool: asyncpg.Pool) -> None:
    await add(pool, "grp_live", T0)
    await add(pool, "grp_gone", T0 + timedelta(seconds=1), deleted=True)
    live = await queries.list_groups(pool, "org_a", limit=10)
    assert [g.id for g in live.groups] == ["grp_live"]
    both = await queries.list_groups(pool, "org_a", limit=10, filters=Filters(include_deleted=True))
    assert [g.id for g in both.groups] == ["grp_live", "grp_gone"]
    assert both.groups[1].deleted_at == T0 + timedelta(seconds=1)


async def test_get_group_only_in_its_organization(pool: asyncpg.Pool) -> None:
    await add(pool, "grp_mine", T0)
    group = await queries.get_group(pool, "org_a", "grp_mine")
    assert group is not None
    assert (group.id, group.organization_id, group.updated_at) == ("grp_mine", "org_a", T0)
    assert await queries.get_group(pool, "org_b", "grp_mine") is None
    assert await queries.get_group(pool, "org_a", "grp_missing") is None


@pytest.mark.parametrize(
    "filters",
    [
        Filters(),
        Filters(T0 - timedelta(microseconds=1), None, include_deleted=True),
        Filters(None, T0 + timedelta(days=9, microseconds=999)),
        Filters(T0, T0, include_deleted=False),
    ],
)
def test_a_cursor_keeps_its_position_to_the_microsecond_and_its_filters(filters: Filters) -> None:
    cursor = Cursor(Position(T0 + timedelta(microseconds=123_457), "grp_01JD3K5Q9Z8X"), filters)
    text = encode_cursor(cursor)
    assert "=" not in text
    assert decode_cursor(text) == cursor


def test_a_cursor_made_before_cursors_carried_filters_still_reads() -> None:
    micros = (T0 - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert decode_cursor(_b64(f"{micros}:grp_1")) == Cursor(Position(T0, "grp_1"))


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "abc",
        _b64("123"),
        _b64("x:grp_1"),
        _b64("123:"),
        _b64("123:\x00"),
        _b64("123:grp_1\x00"),
        _b64("123:1"),
        _b64("123:grp_"),
        _b64("123:grp_a b"),
        _b64("123:grp_" + "a" * 61),
        _b64("99999999999999999999:grp_1"),
        _b64("123:grp_1:::"),
        _b64("123:grp_1:::2"),
        _b64("123:grp_1:x::0"),
        _b64("123:grp_1::99999999999999999999:0"),
        _b64("123:grp_1:1:2:0:"),
        _b64("123:grp_1:1:0"),
        base64.urlsafe_b64encode(b"\xff\xfe:grp_1").decode(),
    ],
)
def test_bad_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(ValueError, match="malformed cursor"):
        decode_cursor(cursor)
