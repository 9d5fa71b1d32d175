"""The members phase: memberships added a thousand per command over many groups, next to the
same rows written straight into the table; a thousand added to a group of a million members
against a thousand added to an empty one; and that big group deleted while other
organizations' commands go on at a steady rate, against the same load without the delete."""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from service.adapters.kafka import Record
from service.adapters.postgres.db import Pool
from service.bench import kafka_io, service_phases
from service.bench.context import BenchRun
from service.bench.latency import LATENCY_TICK_MS, LATENCY_WARMUP_S, percentiles_ms
from service.bench.process import Services
from service.bench.throughput import Expected, drive_records
from service.bench.timing import no_collector_pauses
from service.config import Settings
from service.domain.commands import CUSTOMER_IDS_MAX

IDS_PER_COMMAND = CUSTOMER_IDS_MAX
COMMANDS_PER_GROUP = 10
# Timed adds of each kind, after one of each that is not timed; the kinds take turns going
# first, so a drift over the repetitions weighs on both alike.
ADD_REPETITIONS = 20
# The steady load of other organizations: adds this small, at the latency phase's rate.
LOAD_IDS = 10
# How often the members phase's service runs its pruner, which purges deleted groups'
# members (every 60 s by default): the purge's time is then its own, not mostly the wait
# for the pruner's next round.
PURGE_INTERVAL_S = 1.0
POLL_S = 0.05
PURGE_TIMEOUT_S = 600.0
RESULT_TIMEOUT_S = 60.0

# (organization id, group id)
Group = tuple[str, str]

INSERT_MEMBERS = """
    INSERT INTO group_members (organization_id, group_id, customer_id, added_at)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
    ON CONFLICT DO NOTHING
    """


@dataclass(frozen=True, slots=True)
class Add:
    """One group.customers.add command."""

    command_id: str
    organization_id: str
    group_id: str
    customer_ids: tuple[str, ...]

    def record(self) -> tuple[bytes, bytes]:
        body = {
            "command_id": self.command_id,
            "type": "group.customers.add",
            "organization_id": self.organization_id,
            "group_id": self.group_id,
            "customer_ids": self.customer_ids,
        }
        return self.organization_id.encode(), orjson.dumps(body)


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


@dataclass
class _Watched:
    """What the delete run's tail saw: each load command's time from when it was due to its
    event, and the results of the big group's organization (when seen, and the code)."""

    results_topic: str
    big_org: bytes
    due: dict[str, float] = field(default_factory=dict)
    to_event: dict[str, float] = field(default_factory=dict)
    answers: dict[str, tuple[float, int]] = field(default_factory=dict)

    def on_record(self, record: Record, seen_at: float) -> None:
        if record.topic == self.results_topic:
            if record.key == self.big_org:
                result = orjson.loads(record.value)
                self.answers.setdefault(result["command_id"], (seen_at, result["code"]))
            return
        for key, value in record.headers:
            if key == "ce_commandid":
                if (command_id := value.decode()) in self.due:
                    self.to_event.setdefault(command_id, seen_at - self.due[command_id])
                return

    def latencies(self, window: tuple[float, float]) -> list[float]:
        """Of the load commands due within `window`."""
        lo, hi = window
        return [
            self.to_event[c] for c, at in self.due.items() if lo <= at <= hi and c in self.to_event
        ]


@dataclass
class _Deleted:
    """When the delete was sent, whether it was answered and its members purged, and when
    the purge was seen done (or given up on)."""

    sent: float
    answered: bool
    purged: bool
    ended: float


async def delete_under_load(
    run: BenchRun, services: Services, big: Group, others: list[Group]
) -> None:
    """Other organizations' small adds at a steady rate, first alone, then while the big
    group is deleted and its members purged; each add timed from when it was due to its
    event, as the latency phase times commands."""
    o, t = run.options, services.settings
    members = await run.database.group_members(*big)
    delete_id = run.tag("mdelete")
    watched = _Watched(t.topic_results, big[0].encode())
    tail = kafka_io.Tail(t, [t.topic_events, t.topic_results], watched.on_record)
    await tail.start()
    client = kafka_io.producer(t)
    await client.start()

    def load(tag: str) -> contextlib.AbstractAsyncContextManager[None]:
        return steady_adds(
            client, t.topic_commands, others, o.rate, tag=run.tag(tag), due=watched.due
        )

    try:
        with no_collector_pauses():
            run.progress(
                f"members: other organizations' adds of {LOAD_IDS} at {o.rate:,}/s, "
                f"{o.latency_seconds:g} s measured"
            )
            async with load("mq"):
                await asyncio.sleep(LATENCY_WARMUP_S)
                quiet = time.perf_counter()
                await asyncio.sleep(o.latency_seconds)
                quiet_window = (quiet, time.perf_counter())
            run.progress(f"members: the same, while a group of {members:,} members is deleted")
            async with load("md"):
                await asyncio.sleep(LATENCY_WARMUP_S)
                deleted = await _delete(
                    run, client, t.topic_commands, big, command_id=delete_id, watched=watched
                )
            await tail.wait(lambda: len(watched.to_event) >= len(watched.due), stall_s=15)
    finally:
        await client.stop()
        await tail.stop()
    missing = len(watched.due) - len(watched.to_event)
    if missing:
        run.problem(f"members: {missing} of {len(watched.due)} load events never came")
    if not deleted.answered:
        run.problem(f"members: no result for the delete of a group of {members:,} members")
        return
    if (code := watched.answers[delete_id][1]) != 200:
        run.problem(f"members: the delete of the big group answered {code}")
        return
    if not deleted.purged:
        run.problem(f"members: the deleted group was not purged in {PURGE_TIMEOUT_S:g} s")
        return
    if left := await run.database.group_members(*big):
        run.problem(f"members: {left:,} members of the deleted group left after its purge")
    latencies = {
        "quiet": watched.latencies(quiet_window),
        "delete": watched.latencies((deleted.sent, deleted.ended)),
    }
    answered_at = watched.answers[delete_id][0]
    run.figures["members_delete_result_ms"] = round((answered_at - deleted.sent) * 1000, 2)
    run.figures["members_purge_s"] = round(deleted.ended - deleted.sent, 3)
    run.figures["members"]["delete"] = {
        "group_members": members,
        "purge_interval_s": PURGE_INTERVAL_S,
        "load_rate": o.rate,
        "load_ids_per_command": LOAD_IDS,
        "load_commands": {name: len(found) for name, found in latencies.items()},
        "load_ms": {name: percentiles_ms(found) for name, found in latencies.items()},
    }
    if not all(latencies.values()):
        run.problem("members: no load command was due while the delete and its purge ran")
        return
    quiet_p99 = percentiles_ms(latencies["quiet"])["p99"]
    delete_p99 = percentiles_ms(latencies["delete"])["p99"]
    run.figures["members_load_quiet_p99_ms"] = quiet_p99
    run.figures["members_load_delete_p99_ms"] = delete_p99
    run.figures["members_load_delete_vs_quiet"] = round(delete_p99 / quiet_p99, 3)


async def _delete(
    run: BenchRun, client: Any, topic: str, group: Group, *, command_id: str, watched: _Watched
) -> _Deleted:
    """Send the group's delete; wait for its result, then for its members' purge."""
    organization_id, group_id = group
    body = {
        "command_id": command_id,
        "type": "group.delete",
        "organization_id": organization_id,
        "group_id": group_id,
    }
    sent = time.perf_counter()
    await kafka_io.produce(client, topic, [(organization_id.encode(), orjson.dumps(body))])
    answered = await _until(lambda: command_id in watched.answers, RESULT_TIMEOUT_S)
    purged = answered and await _purged(run, group)
    return _Deleted(sent, answered, purged, time.perf_counter())


async def _until(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.perf_counter() + timeout_s
    while not done():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


async def _purged(run: BenchRun, group: Group) -> bool:
    """Once the group's purge is no longer queued; the delete queued it in its transaction."""
    deadline = time.perf_counter() + PURGE_TIMEOUT_S
    while await run.database.purge_queued(*group):
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


@contextlib.asynccontextmanager
async def steady_adds(
    client: Any, topic: str, groups: list[Group], rate: int, *, tag: str, due: dict[str, float]
) -> AsyncIterator[None]:
    """Adds of LOAD_IDS new members to `groups` in turn, at `rate`/s until the block ends,
    each noted in `due` with when it was due. As in the latency phase, the commands due are
    handed over every LATENCY_TICK_MS as one record batch per partition."""
    stop = asyncio.Event()

    async def send() -> None:
        pending: list[asyncio.Future[Any]] = []
        started = time.perf_counter()
        done = 0
        while not stop.is_set():
            now = int((time.perf_counter() - started) * rate) + 1
            records = []
            for seq in range(done, now):
                organization_id, group_id = groups[seq % len(groups)]
                ids = tuple(f"cus_{tag}-{seq}-{n}" for n in range(LOAD_IDS))
                add = Add(f"{tag}-{seq}", organization_id, group_id, ids)
                due[add.command_id] = started + seq / rate
                records.append(add.record())
            pending += await kafka_io.send(client, topic, records)
            done = now
            await asyncio.sleep(LATENCY_TICK_MS / 1000)
        await asyncio.gather(*pending)

    sending = asyncio.create_task(send())
    try:
        yield
    finally:
        stop.set()
        await sending
