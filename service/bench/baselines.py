"""The baselines phase: what raw PostgreSQL, running the service's own statements, and raw
Kafka do on the same machine in the same run, for comparison.

Everything a statement needs is computed before the clock starts, so the database's
figures are its cost (and asyncpg's), not Python's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from service.adapters.postgres.command_store import LOAD_BATCH, WRITE_BATCH, begin_batch
from service.adapters.postgres.db import Connection, Pool
from service.bench import kafka_io
from service.bench.context import BenchRun
from service.bench.database import SMALL_PRELOAD
from service.bench.workload import CODES, Planned, plan
from service.config import Settings
from service.domain.model import Group, group_json, name_key

MESSAGE_BYTES = 300
# Group commands change no members: WRITE_BATCH's columns of members added, members removed
# and purges queued go empty.
MEMBER_COLUMNS = 4 + 3 + 2


async def measure(run: BenchRun, own: Settings, roundtrip_topic: str) -> None:
    o = run.options
    found: dict[str, float] = {}
    run.figures["baselines"] = found

    def rows(name: str) -> list[Rows]:
        return rows_for(plan(o.commands, run.orgs, run.tag(name)))

    # The same starting point as the throughput run, so the planner sees the same table.
    await run.database.reset()
    await run.database.preload(SMALL_PRELOAD)
    run.progress("baseline: raw asyncpg, one transaction per command, one connection")
    found["db_tx_per_s_c1"] = await transactions_per_s(
        run.database.pool, rows("c1"), 1, o.baseline_seconds
    )
    connections = own.database_pool_max
    run.progress(f"baseline: raw asyncpg, one transaction per command, {connections} connections")
    found["db_tx_per_s_pool"] = await transactions_per_s(
        run.database.pool, rows("cp"), connections, o.baseline_seconds
    )
    run.figures["sizes"]["db_pool_connections"] = connections
    # The size of the service's transactions when it is busiest: a full batch, in lanes.
    size = max(1, own.command_batch_max // own.command_lanes)
    run.progress(f"baseline: raw asyncpg, set-based batches of {size}")
    found["db_batch_rows_per_s"] = await batch_rows_per_s(run.database.pool, rows("cb"), size)
    run.figures["sizes"]["db_batch_rows"] = size
    run.progress("baseline: raw aiokafka produce -> consume")
    found["kafka_roundtrip_msgs_per_s"] = await kafka_io.roundtrip_per_s(
        own, roundtrip_topic, o.commands, MESSAGE_BYTES
    )
    await run.database.reset()


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
                 group.version, now, now, group.deleted_at, 0, name_key(group.name)),
                (f"group.{p.kind}d", p.organization_id, p.group_id, p.version, p.command_id,
                 None, payload, now),
                (p.organization_id, p.command_id, "0" * 64, result),
            )
        )  # fmt: skip
    return made


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width


def _updated(group: tuple[Any, ...]) -> tuple[Any, ...]:
    """A group row in WRITE_BATCH's column order for updates."""
    id_, _, name, description, platform_id, version, _, updated_at, deleted_at, count, key = group
    return id_, name, key, description, platform_id, version, updated_at, deleted_at, count


async def _transaction(conn: Connection, batch: Sequence[Rows]) -> None:
    """The statements the service runs for a batch of group commands (no membership
    commands), with each group written once."""
    created = {r.planned.group_id for r in batch if r.planned.kind == "create"}
    final = {r.planned.group_id: r.group for r in batch if r.planned.kind != "conflict"}
    commands = [r.planned for r in batch]
    named = [p for p in commands if p.kind != "delete"]
    await conn.execute(begin_batch(p.organization_id for p in commands))
    await conn.fetch(
        LOAD_BATCH,
        [p.organization_id for p in commands],
        [p.command_id for p in commands],
        [p.group_id for p in commands],
        [p.organization_id for p in named],
        [name_key(p.name) for p in named],
        [],
        [],
        [],
    )
    await conn.execute(
        WRITE_BATCH,
        *_columns([_updated(g) for gid, g in final.items() if gid not in created], 9),
        *_columns([g for gid, g in final.items() if gid in created], 11),
        *_columns([r.outbox for r in batch if r.planned.eventful], 8),
        *_columns([r.processed for r in batch], 4),
        *_columns([], MEMBER_COLUMNS),
    )
    await conn.execute("COMMIT")


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
                # One command per transaction, as a service without batching would.
                await _transaction(conn, [r])
            return len(lane)

    done = sum(await asyncio.gather(*(run(lane) for lane in lanes if lane)))
    return done / (time.perf_counter() - started)


async def batch_rows_per_s(pool: Pool, rows: Sequence[Rows], batch_size: int) -> float:
    """Commands/s written set-based, `batch_size` per transaction, on one connection."""
    async with pool.acquire() as conn:
        started = time.perf_counter()
        for start in range(0, len(rows), batch_size):
            await _transaction(conn, rows[start : start + batch_size])
        return len(rows) / (time.perf_counter() - started)
