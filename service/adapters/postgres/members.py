"""Group members in PostgreSQL beyond a batch's own writes: the purge of deleted groups'
members, and the HTTP reads of members and of a customer's groups."""

from __future__ import annotations

from service.adapters.postgres.db import Pool

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
