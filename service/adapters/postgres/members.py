"""Group members in PostgreSQL beyond a batch's own writes: the purge of deleted groups'
members, and the HTTP reads of members and of a customer's groups."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from service.adapters.postgres.command_store import GROUP_COLUMNS, group_from_row
from service.adapters.postgres.db import Pool
from service.domain.model import Group

NEXT_PURGE = "SELECT organization_id, group_id FROM member_purges ORDER BY queued_at LIMIT 1"

# A batch at a time, each its own short transaction, probing the primary key's prefix.
PURGE_SOME = """
DELETE FROM group_members WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM group_members WHERE organization_id = $1 AND group_id = $2 LIMIT $3))
"""

PURGED = "DELETE FROM member_purges WHERE organization_id = $1 AND group_id = $2"


class MemberPurger:
    """Removes the member rows of deleted groups, which no read sees any more."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def purge(self, batch_size: int) -> int:
        """Every queued group's members; returns how many rows went."""
        total = 0
        while (queued := await self._pool.fetchrow(NEXT_PURGE)) is not None:
            key = (queued["organization_id"], queued["group_id"])
            while True:
                status = await self._pool.execute(PURGE_SOME, *key, batch_size)
                deleted = int(status.split()[-1])
                total += deleted
                if deleted < batch_size:
                    break
            await self._pool.execute(PURGED, *key)
        return total


# A deleted group's rows stay until purged, so every read asks for a live group. Keyset
# pages walk the primary key from the cursor on; the liveness check is not correlated with
# the rows, so it runs once per statement.
MEMBERS_PAGE = """
SELECT customer_id, added_at FROM group_members
WHERE organization_id = $1 AND group_id = $2 AND ($3::text IS NULL OR customer_id > $3)
  AND EXISTS (SELECT FROM customer_groups
              WHERE id = $2 AND organization_id = $1 AND deleted_at IS NULL)
ORDER BY customer_id
LIMIT $4
"""

LIVE_GROUP = """
SELECT EXISTS (SELECT FROM customer_groups
               WHERE id = $2 AND organization_id = $1 AND deleted_at IS NULL)
"""

# Walks group_members_customer in group_id order and probes each group by its primary key;
# LIMIT 1 keeps the planner from turning the probes into a join over all groups. Rows of
# deleted groups not purged yet are stepped over.
CUSTOMER_GROUPS_PAGE = f"""
SELECT g.* FROM group_members AS m
CROSS JOIN LATERAL (
    SELECT {GROUP_COLUMNS} FROM customer_groups
    WHERE id = m.group_id AND organization_id = m.organization_id AND deleted_at IS NULL
    LIMIT 1
) AS g
WHERE m.organization_id = $1 AND m.customer_id = $2 AND ($3::text IS NULL OR m.group_id > $3)
ORDER BY m.group_id
LIMIT $4
"""

Item = TypeVar("Item")


@dataclass(frozen=True, slots=True)
class Member:
    customer_id: str
    added_at: datetime


@dataclass(frozen=True, slots=True)
class Page(Generic[Item]):
    """One page in key order; `next` is the last key when more rows follow."""

    items: list[Item]
    next: str | None


async def members(
    pool: Pool, organization_id: str, group_id: str, *, limit: int, after: str | None = None
) -> Page[Member] | None:
    """A live group's members after `after`, in customer_id order; None for no live group."""
    rows = await pool.fetch(MEMBERS_PAGE, organization_id, group_id, after, limit + 1)
    # No rows: the group has none past `after`, or there is no such live group.
    if not rows and not await pool.fetchval(LIVE_GROUP, organization_id, group_id):
        return None
    page = [Member(row["customer_id"], row["added_at"]) for row in rows[:limit]]
    return Page(page, page[-1].customer_id if len(rows) > limit else None)


async def customer_groups(
    pool: Pool, organization_id: str, customer_id: str, *, limit: int, after: str | None = None
) -> Page[Group]:
    """The live groups a customer is in after group id `after`, in id order."""
    rows = await pool.fetch(CUSTOMER_GROUPS_PAGE, organization_id, customer_id, after, limit + 1)
    page = [group_from_row(row) for row in rows[:limit]]
    return Page(page, page[-1].id if len(rows) > limit else None)
