"""Outbox rows the relay set aside (parked): list them, put them back in line, or release
them (give up on the poison, so its group's later events go on)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.adapters.postgres import outbox_store
from service.adapters.postgres.db import Pool
from service.ops.common import OpsError, iso


@dataclass(frozen=True, slots=True)
class ParkedRow:
    event_id: str
    event_type: str
    organization_id: str
    group_id: str
    group_version: int
    parked_at: str | None
    reason: str
    payload_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "organization_id": self.organization_id,
            "group_id": self.group_id,
            "group_version": self.group_version,
            "parked_at": self.parked_at,
            "reason": self.reason,
            "payload_bytes": self.payload_bytes,
        }


async def list_parked(
    pool: Pool, organizations: list[str] | None = None, groups: list[str] | None = None
) -> list[ParkedRow]:
    rows = await pool.fetch(outbox_store.PARKED, organizations or None, groups or None)
    return [
        ParkedRow(
            r["event_id"],
            r["event_type"],
            r["organization_id"],
            r["group_id"],
            r["group_version"],
            iso(r["parked_at"]),
            r["parked_reason"] or "",
            len(r["payload"].encode()),
        )
        for r in rows
    ]


async def retry(pool: Pool, groups: list[str], *, dry_run: bool = False) -> int:
    """Put the groups' parked rows back in line, in their order; the relay tries them again
    (after, say, the topic's max.message.bytes was raised)."""
    if not groups:
        raise OpsError("name at least one --group")
    if dry_run:
        return len(await list_parked(pool, groups=groups))
    status = await pool.execute(outbox_store.RETRY_PARKED, groups)
    return int(status.split()[-1])


async def release(pool: Pool, event_ids: list[str], *, dry_run: bool = False) -> int:
    """Give up on these events (they are marked done, never published) and put the rows
    behind them back in line. Returns how many rows went back in line."""
    if not event_ids:
        raise OpsError("name at least one --event-id")
    parked = {r.event_id: r for r in await list_parked(pool)}
    unknown = [e for e in event_ids if e not in parked]
    if unknown:
        raise OpsError(f"not parked: {', '.join(unknown)}")
    if dry_run:
        groups = {parked[e].group_id for e in event_ids}
        return sum(1 for r in parked.values() if r.group_id in groups) - len(event_ids)
    status = await pool.execute(outbox_store.RELEASE_PARKED, event_ids)
    return int(status.split()[-1])
