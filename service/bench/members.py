"""The members phase: memberships added a thousand per command over many groups, next to the
same rows written straight into the table; a thousand added to a group of a million members
against a thousand added to an empty one; and that big group deleted while other
organizations' commands go on at a steady rate, against the same load without the delete."""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from service.adapters.kafka import Record
from service.adapters.postgres.db import Pool
from service.bench import kafka_io, service_phases
from service.bench.context import BenchRun
from service.bench.members_delete import delete_under_load
from service.bench.members_plan import (
    ADD_REPETITIONS,
    COMMANDS_PER_GROUP,
    IDS_PER_COMMAND,
    PURGE_INTERVAL_S,
    Add,
    Group,
)
from service.bench.process import Services
from service.bench.throughput import Expected, drive_records
from service.bench.timing import no_collector_pauses
from service.config import Settings

INSERT_MEMBERS = """
    INSERT INTO group_members (organization_id, group_id, customer_id, added_at)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
    ON CONFLICT DO NOTHING
    """


def plan_adds(members: int, orgs: Sequence[str], tag: str) -> tuple[list[Group], list[Add]]:
    """`members` memberships, IDS_PER_COMMAND to a command and COMMANDS_PER_GROUP commands
    to a group (but a group in every organization while there are commands enough), the
    groups spread over `orgs` and the commands sent to them in turn; the groups, then the
    commands. Every id a command names is new to its group, so each adds all of them."""
    commands = math.ceil(members / IDS_PER_COMMAND)
    count = max(min(commands, len(orgs)), math.ceil(commands / COMMANDS_PER_GROUP))
    groups = [(orgs[i % len(orgs)], f"grp_{tag}-{i}") for i in range(count)]
    adds = []
    for seq in range(commands):
        organization_id, group_id = groups[seq % count]
        first = seq // count * IDS_PER_COMMAND
        size = min(IDS_PER_COMMAND, members - seq * IDS_PER_COMMAND)
        ids = tuple(f"cus_{n}" for n in range(first, first + size))
        adds.append(Add(f"{tag}-{seq}", organization_id, group_id, ids))
    return groups, adds


async def measure(run: BenchRun, own: Settings) -> None:
    o = run.options
    await run.database.reset()
    groups, adds = plan_adds(o.members, run.orgs, run.tag("m"))
    big_org = run.tag("big")
    big = (big_org, f"grp_{big_org}")
    empties = [(big_org, f"grp_{run.tag('empty')}-{i}") for i in range(ADD_REPETITIONS + 1)]
    await run.database.add_groups([*groups, big, *empties])
    run.progress(
        f"members baseline: {o.members:,} rows straight into group_members, "
        f"{IDS_PER_COMMAND:,} per transaction, one connection"
    )
    baseline = await baseline_rows_per_s(run.database.pool, adds)
    run.figures["members_baseline_rows_per_s"] = round(baseline, 1)
    run.figures["members"] = {}
    await run.database.empty_members()
    settings = own.model_copy(update={"prune_interval_s": PURGE_INTERVAL_S})
    async with service_phases.started(run, settings) as services:
        await service_phases.warm_up(run, services, "mw")
        await added_per_s(run, services, groups, adds)
        run.progress(f"members: preloading a group of {o.big_group:,} members")
        await run.database.preload_members(*big, o.big_group, "cus_pre-")
        await big_against_empty(run, services, big, empties)
        await delete_under_load(run, services, big, groups)
    if services.processes:
        peak = max(process.peak_rss_mb for process in services.processes)
        run.figures["rss_mb_members"] = round(peak, 1)


async def baseline_rows_per_s(pool: Pool, adds: Sequence[Add]) -> float:
    """The adds' rows written set-based, one transaction per command, on one connection."""
    now = datetime.now(UTC)
    batches = [
        (
            [add.organization_id] * len(add.customer_ids),
            [add.group_id] * len(add.customer_ids),
            list(add.customer_ids),
            [now] * len(add.customer_ids),
        )
        for add in adds
    ]
    rows = sum(len(add.customer_ids) for add in adds)
    async with pool.acquire() as conn:
        with no_collector_pauses():
            started = time.perf_counter()
            for batch in batches:
                await conn.execute(INSERT_MEMBERS, *batch)
            return rows / (time.perf_counter() - started)


async def added_per_s(
    run: BenchRun, services: Services, groups: list[Group], adds: list[Add]
) -> None:
    """The adds sent at once, timed from the first produced to the last event on the topic."""
    o = run.options
    expected = Expected(
        orgs=frozenset(add.organization_id.encode() for add in adds),
        groups=frozenset(add.group_id.encode() for add in adds),
        events=len(adds),
        codes=Counter({200: len(adds)}),
    )
    added: list[int] = []

    def on_event(record: Record) -> None:
        if ("ce_type", b"group.customers_added") in record.headers:
            added.append(len(orjson.loads(record.value)["customer_ids"]))

    run.progress(
        f"members: {o.members:,} added by {len(adds):,} commands to {len(groups):,} groups"
    )
    records = [add.record() for add in adds]
    outcome = await drive_records(run, services, records, expected, on_event=on_event)
    if sum(added) != o.members:
        run.problem(f"members: {o.members} added but the events carry {sum(added)}")
    if (stored := await run.database.members()) != o.members:
        run.problem(f"members: {o.members} added but {stored} rows stored")
    per_s = o.members / outcome["seconds"]
    run.figures["members_per_s"] = round(per_s, 1)
    baseline = run.figures["members_baseline_rows_per_s"]
    run.figures["members_vs_baseline"] = round(per_s / baseline, 3)
    run.figures["members"]["added"] = {**outcome, "commands": len(adds), "groups": len(groups)}


async def big_against_empty(
    run: BenchRun, services: Services, big: Group, empties: list[Group]
) -> None:
    """One add of IDS_PER_COMMAND at a time, to the big group or to an empty one in turn, each
    timed from its send to its event."""
    t = services.settings
    arrived: dict[str, float] = {}

    def on_record(record: Record, seen_at: float) -> None:
        for key, value in record.headers:
            if key == "ce_commandid":
                arrived.setdefault(value.decode(), seen_at)
                return

    run.progress(
        f"members: {IDS_PER_COMMAND:,} added to the big group and to an empty one, "
        f"{ADD_REPETITIONS} times each"
    )
    times: dict[str, list[float]] = {"empty": [], "big": []}
    tail = kafka_io.Tail(t, [t.topic_events], on_record)
    await tail.start()
    client = kafka_io.producer(t)
    await client.start()
    try:
        for rep in range(ADD_REPETITIONS + 1):
            turn = [("empty", empties[rep]), ("big", big)]
            if rep % 2 == 0:
                turn.reverse()
            for kind, (organization_id, group_id) in turn:
                tag = run.tag(f"m{kind}-{rep}")
                ids = tuple(f"cus_{tag}-{n}" for n in range(IDS_PER_COMMAND))
                add = Add(tag, organization_id, group_id, ids)
                took = await _add_alone(client, t.topic_commands, tail, add, arrived)
                if took is None:
                    run.problem(f"members: the event of {add.command_id} never came")
                    return
                if rep:
                    times[kind].append(took)
    finally:
        await client.stop()
        await tail.stop()
    empty_ms = statistics.median(times["empty"]) * 1000
    big_ms = statistics.median(times["big"]) * 1000
    run.figures["members_add_empty_ms"] = round(empty_ms, 2)
    run.figures["members_add_big_ms"] = round(big_ms, 2)
    run.figures["members_add_big_vs_empty"] = round(big_ms / empty_ms, 3)
    run.figures["members"]["add"] = {
        "big_group_members": run.options.big_group,
        "runs_ms": {kind: [round(s * 1000, 2) for s in runs] for kind, runs in times.items()},
    }


async def _add_alone(
    client: Any, topic: str, tail: kafka_io.Tail, add: Add, arrived: dict[str, float]
) -> float | None:
    """Seconds from the add's send until its event arrived (`tail` notes it in `arrived`)."""
    with no_collector_pauses():
        started = time.perf_counter()
        await kafka_io.produce(client, topic, [add.record()])
        if not await tail.wait(lambda: add.command_id in arrived, stall_s=30):
            return None
    return arrived[add.command_id] - started
