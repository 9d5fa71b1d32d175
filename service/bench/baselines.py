"""What the database alone can do with the service's own statements, for comparison.

Everything a statement needs is computed before the clock starts, so these figures are
the database's cost (and asyncpg's), not Python's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from service.adapters.command_store import (
    INSERT_GROUPS,
    INSERT_OUTBOX,
    INSERT_PROCESSED,
    LOCK_ORGANIZATIONS,
    SELECT_GROUPS_BY_ID,
    SELECT_LIVE_GROUPS_BY_NAME,
    SELECT_PROCESSED,
    UPDATE_GROUPS,
)
from service.adapters.db import Connection, Pool
from service.bench.workload import CODES, Planned
from service.domain.model import Group, group_json


@dataclass(frozen=True, slots=True)
class Rows:
    """One planned command as the rows the service would read and write for it."""

    planned: Planned
    group: tuple[Any, ...]
    outbox: tuple[Any, ...]
    processed: tuple[Any, ...]


def rows_for(planned: Sequence[Planned]) -> list[Rows]:
    now = datetime.now(UTC)
    made = []
    for p in planned:
        group = Group(
            p.group_id,
            p.organization_id,
            p.name,
            p.description,
            None,
            p.version,
            now,
            now,
            now if p.deleted else None,
        )
        payload = orjson.dumps(group_json(group)).decode()
        result = orjson.dumps({"command_id": p.command_id, "code": CODES[p.kind]}).decode()
        made.append(
            Rows(
                p,
                (group.id, group.organization_id, group.name, group.description, None,
                 group.version, now, now, group.deleted_at),
                (f"group.{p.kind}d", p.organization_id, p.group_id, p.version, p.command_id,
                 None, payload, now),
                (p.organization_id, p.command_id, "0" * 64, result),
            )
        )  # fmt: skip
    return made


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]


def _updated(group: tuple[Any, ...]) -> tuple[Any, ...]:
    """A group row in UPDATE_GROUPS's column order."""
    id_, _, name, description, platform_id, version, _, updated_at, deleted_at = group
    return id_, name, description, platform_id, version, updated_at, deleted_at


async def _one(conn: Connection, r: Rows) -> None:
    """One command in its own transaction, one statement at a time, as a naive service would."""
    p = r.planned
    async with conn.transaction():
        await conn.execute(LOCK_ORGANIZATIONS, [p.organization_id])
        await conn.fetch(SELECT_PROCESSED, [p.organization_id], [p.command_id])
        await conn.fetch(SELECT_GROUPS_BY_ID, [p.group_id])
        if p.kind != "delete":
            await conn.fetch(SELECT_LIVE_GROUPS_BY_NAME, [p.organization_id], [p.name.lower()])
        if p.kind == "create":
            await conn.execute(INSERT_GROUPS, *_columns([r.group]))
        elif p.kind != "conflict":
            await conn.execute(UPDATE_GROUPS, *_columns([_updated(r.group)]))
        if p.eventful:
            await conn.execute(INSERT_OUTBOX, *_columns([r.outbox]))
        await conn.execute(INSERT_PROCESSED, *_columns([r.processed]))


async def transactions_per_s(
    pool: Pool, rows: Sequence[Rows], connections: int, seconds: float
) -> float:
    """Commands/s with one transaction each, over `connections` connections at once.

    Each connection takes whole organizations, so their commands keep their order and
    connections do not queue on one another's organization locks."""
    orgs = sorted({r.planned.organization_id for r in rows})
    lane_of = {org: i % connections for i, org in enumerate(orgs)}
    lanes: list[list[Rows]] = [[] for _ in range(connections)]
    for r in rows:
        lanes[lane_of[r.planned.organization_id]].append(r)
    started = time.perf_counter()
    deadline = started + seconds

    async def run(lane: list[Rows]) -> int:
        async with pool.acquire() as conn:
            for done, r in enumerate(lane):
                if time.perf_counter() > deadline:
                    return done
                await _one(conn, r)
            return len(lane)

    done = sum(await asyncio.gather(*(run(lane) for lane in lanes if lane)))
    return done / (time.perf_counter() - started)


async def _batch(conn: Connection, batch: Sequence[Rows]) -> None:
    """The statements the service runs for a batch, with each group written once."""
    created = {r.planned.group_id for r in batch if r.planned.kind == "create"}
    final = {r.planned.group_id: r.group for r in batch if r.planned.kind != "conflict"}
    inserted = [g for gid, g in final.items() if gid in created]
    updated = [_updated(g) for gid, g in final.items() if gid not in created]
    commands = [r.planned for r in batch]
    named = [p for p in commands if p.kind != "delete"]
    async with conn.transaction():
        await conn.execute(LOCK_ORGANIZATIONS, [p.organization_id for p in commands])
        await conn.fetch(
            SELECT_PROCESSED,
            [p.organization_id for p in commands],
            [p.command_id for p in commands],
        )
        await conn.fetch(SELECT_GROUPS_BY_ID, [p.group_id for p in commands])
        await conn.fetch(
            SELECT_LIVE_GROUPS_BY_NAME,
            [p.organization_id for p in named],
            [p.name.lower() for p in named],
        )
        if updated:
            await conn.execute(UPDATE_GROUPS, *_columns(updated))
        if inserted:
            await conn.execute(INSERT_GROUPS, *_columns(inserted))
        events = [r.outbox for r in batch if r.planned.eventful]
        if events:
            await conn.execute(INSERT_OUTBOX, *_columns(events))
        await conn.execute(INSERT_PROCESSED, *_columns([r.processed for r in batch]))


async def batch_rows_per_s(pool: Pool, rows: Sequence[Rows], batch_size: int = 500) -> float:
    """Commands/s written set-based, `batch_size` per transaction, on one connection."""
    async with pool.acquire() as conn:
        started = time.perf_counter()
        for start in range(0, len(rows), batch_size):
            await _batch(conn, rows[start : start + batch_size])
        return len(rows) / (time.perf_counter() - started)
