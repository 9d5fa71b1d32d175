"""The members phase's last part: a big group deleted while other organizations' commands
are timed, and how long its members take to be purged."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from service.adapters.kafka import Record
from service.bench import kafka_io
from service.bench.context import BenchRun
from service.bench.latency import LATENCY_TICK_MS, LATENCY_WARMUP_S, percentiles_ms
from service.bench.members_plan import PURGE_INTERVAL_S, Add, Group
from service.bench.process import Services
from service.bench.timing import no_collector_pauses

# The steady load of other organizations: adds this small, at the latency phase's rate.
LOAD_IDS = 10


POLL_S = 0.05


PURGE_TIMEOUT_S = 600.0


RESULT_TIMEOUT_S = 60.0


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
