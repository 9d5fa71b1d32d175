"""The read side: customer groups as the HTTP API lists and fetches them, always per tenant."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service.adapters.postgres.command_store import GROUP_COLUMNS, group_from_row
from service.adapters.postgres.db import Pool
from service.domain.commands import GROUP_ID
from service.domain.model import Group

# Keyset order is (updated_at, id), served by the index customer_groups_org_updated. Cursor
# paging cannot skip a row: an organization's writers hold its advisory lock from before
# they read the clock until they commit, so (with clocks that do not step back) a change
# not visible yet gets a later updated_at than every visible change of that organization.
SELECT_PAGE = f"""
SELECT {GROUP_COLUMNS} FROM customer_groups
WHERE organization_id = $1
  AND ($2::boolean OR deleted_at IS NULL)
  AND ($3::timestamptz IS NULL OR updated_at >= $3)
  AND ($4::timestamptz IS NULL OR updated_at <= $4)
  AND ($5::timestamptz IS NULL OR (updated_at, id) > ($5, $6::text))
ORDER BY updated_at, id
LIMIT $7 OFFSET $8
"""

SELECT_ONE = f"SELECT {GROUP_COLUMNS} FROM customer_groups WHERE organization_id = $1 AND id = $2"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a listing stopped: the last group's sort key."""

    updated_at: datetime
    id: str

    @classmethod
    def after(cls, group: Group) -> Position:
        return cls(group.updated_at, group.id)


@dataclass(frozen=True, slots=True)
class Filters:
    """What a listing is narrowed to; bounds are inclusive."""

    updated_from: datetime | None = None
    updated_to: datetime | None = None
    include_deleted: bool = False


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position and the filters of the listing it belongs to: a client that sends only
    the cursor for the next page (as Rutter's clients do) stays in the same listing."""

    position: Position
    filters: Filters = Filters()


def _micros(moment: datetime | None) -> str:
    return "" if moment is None else str((moment - _EPOCH) // _MICROSECOND)


def _moment(micros: str) -> datetime:
    if not micros.isascii() or not micros.lstrip("-").isdigit():
        raise ValueError("malformed cursor")
    try:
        return _EPOCH + int(micros) * _MICROSECOND
    except OverflowError as error:
        raise ValueError("malformed cursor") from error


def encode_cursor(cursor: Cursor) -> str:
    position, filters = cursor.position, cursor.filters
    raw = f"{_micros(position.updated_at)}:{position.id}"
    if filters != Filters():
        raw += (
            f":{_micros(filters.updated_from)}:{_micros(filters.updated_to)}"
            f":{int(filters.include_deleted)}"
        )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """Raises ValueError for anything encode_cursor did not make."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as error:
        raise ValueError("malformed cursor") from error
    parts = raw.split(":")
    # The id goes to PostgreSQL as a parameter: one it refuses (a NUL) would be a 500.
    if len(parts) not in (2, 5) or not GROUP_ID.fullmatch(parts[1]):
        raise ValueError("malformed cursor")
    position = Position(_moment(parts[0]), parts[1])
    if len(parts) == 2:
        return Cursor(position)
    updated_from, updated_to, deleted = parts[2:]
    if deleted not in ("0", "1"):
        raise ValueError("malformed cursor")
    filters = Filters(
        _moment(updated_from) if updated_from else None,
        _moment(updated_to) if updated_to else None,
        deleted == "1",
    )
    return Cursor(position, filters)


@dataclass(frozen=True, slots=True)
class Page:
    groups: list[Group]
    next: Position | None


async def list_groups(
    pool: Pool,
    organization_id: str,
    *,
    limit: int,
    offset: int = 0,
    after: Position | None = None,
    filters: Filters = Filters(),
) -> Page:
    """One page in (updated_at, id) order."""
    rows = await pool.fetch(
        SELECT_PAGE,
        organization_id,
        filters.include_deleted,
        filters.updated_from,
        filters.updated_to,
        after.updated_at if after else None,
        after.id if after else None,
        limit + 1,
        offset,
    )
    groups = [group_from_row(row) for row in rows[:limit]]
    more = len(rows) > limit
    return Page(groups, Position.after(groups[-1]) if more else None)


async def get_group(pool: Pool, organization_id: str, group_id: str) -> Group | None:
    row = await pool.fetchrow(SELECT_ONE, organization_id, group_id)
    return None if row is None else group_from_row(row)
