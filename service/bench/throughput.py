"""The throughput phase: workloads sent as fast as they go, each timed until its last event."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from service.adapters.kafka import Record
from service.bench import kafka_io, workload
from service.bench.context import BenchRun
from service.bench.database import SMALL_PRELOAD
from service.bench.process import Services
from service.bench.timing import arrivals, cpu_cores, no_collector_pauses


@dataclass
class _Seen:
    results: int = 0
    events: int = 0
    codes: Counter[int] = field(default_factory=Counter)


@dataclass(frozen=True)
class Expected:
    """What a workload brings back: a result with one of `codes` for each command, keyed by
    one of `orgs`, and `events` events keyed by one of `groups`."""

    orgs: frozenset[bytes]
    groups: frozenset[bytes]
    events: int
    codes: Counter[int]

    @classmethod
    def of(cls, planned: list[workload.Planned]) -> Expected:
        return cls(
            frozenset(p.organization_id.encode() for p in planned),
            frozenset(p.group_id.encode() for p in planned if p.eventful),
            workload.expected_events(planned),
            workload.expected_codes(planned),
        )

    @property
    def results(self) -> int:
        return self.codes.total()


async def drive(
    run: BenchRun, services: Services, planned: list[workload.Planned], stall_s: float = 30
) -> dict[str, Any]:
    """Send `planned` as fast as possible and time it by the topics' end offsets; what
    came back is read afterwards and checked against the plan."""
    return await drive_records(
        run, services, workload.encode(planned), Expected.of(planned), stall_s=stall_s
    )


async def drive_records(
    run: BenchRun,
    services: Services,
    records: Sequence[tuple[bytes, bytes]],
    expected: Expected,
    *,
    stall_s: float = 30,
    on_event: Callable[[Record], None] | None = None,
) -> dict[str, Any]:
    """Send `records` as fast as possible and time them by the topics' end offsets; what
    came back is read afterwards (each expected event also by `on_event`) and checked
    against `expected`."""
    t = services.settings
    seen = _Seen()

    def on_record(record: Record) -> None:
        if record.topic == t.topic_results:
            if record.key in expected.orgs:
                seen.codes[orjson.loads(record.value)["code"]] += 1
                seen.results += 1
        elif record.key in expected.groups:
            seen.events += 1
            if on_event is not None:
                on_event(record)

    offsets = kafka_io.Offsets(t, [t.topic_events, t.topic_results])
    await offsets.start()
    client = kafka_io.producer(t)
    await client.start()
    try:
        with no_collector_pauses():
            cpu_before = services.cpu_seconds()
            started = time.perf_counter()
            await kafka_io.produce(client, t.topic_commands, records)
            produced = time.perf_counter()
            wanted = {t.topic_events: expected.events, t.topic_results: expected.results}
            arrived = await arrivals(offsets.gained, wanted, stall_s)
            cpu_after = services.cpu_seconds()
        await offsets.read(on_record)
    finally:
        await client.stop()
        await offsets.stop()
    gave_up = time.perf_counter()
    last_event = arrived.get(t.topic_events, gave_up)
    last_result = arrived.get(t.topic_results, gave_up)
    outcome: dict[str, Any] = {
        "complete": len(arrived) == len(wanted),
        "seconds": max(last_event, produced) - started,
        "produce_seconds": produced - started,
        # The consumer's share: the last result came this long after the first command.
        "results_seconds": max(last_result, produced) - started,
        "results": seen.results,
        "events": seen.events,
        "events_expected": expected.events,
    }
    if (cores := cpu_cores(cpu_before, cpu_after, outcome["seconds"])) is not None:
        outcome["service_cpu_cores"] = cores
    if seen.results != expected.results:
        run.problem(f"{expected.results} commands sent but {seen.results} results seen")
    if seen.events != expected.events:
        run.problem(f"{expected.events} events expected but {seen.events} seen")
    if seen.codes != expected.codes:
        run.problem(
            f"result codes {dict(seen.codes)} differ from the plan's {dict(expected.codes)}"
        )
    return outcome


async def measure(run: BenchRun, services: Services) -> None:
    """One run, or with a large --preload four: small, large, large again on top of the
    first, small. One run against one varies here by more than the comparison's
    tolerance (docs/benchmark.md); the mean of two runs each, in this order, halves that
    and cancels a steady drift."""
    o = run.options
    compare = not (o.preload <= SMALL_PRELOAD or o.external)
    plan = [(SMALL_PRELOAD, True), (o.preload, True), (o.preload, False), (SMALL_PRELOAD, True)]
    runs = plan if compare else [(o.preload, True)]
    by_size: dict[str, list[float]] = {}
    for index, (size, fresh) in enumerate(runs):
        if fresh and not o.external:
            await run.database.reset()
            if size:
                run.progress(f"preloading {size:,} groups")
                await run.database.preload(size)
        run.progress(f"throughput: {o.commands:,} commands, {size:,} groups there before")
        planned = workload.plan(o.commands, run.orgs, run.tag(f"t{index}"))
        outcome = await drive(run, services, planned)
        by_size.setdefault(str(size), []).append(round(len(planned) / outcome["seconds"], 1))
        if size == o.preload:
            run.figures["throughput"] = {**outcome, "commands": len(planned)}
    means = {size: round(statistics.mean(found), 1) for size, found in by_size.items()}
    run.figures["commands_per_s"] = means[str(o.preload)]
    if compare:
        run.figures["groups_preexisting"] = means
        run.figures["groups_preexisting_runs"] = by_size
        small, large = means[str(SMALL_PRELOAD)], means[str(o.preload)]
        run.figures["groups_preexisting_change_pct"] = round((large / small - 1) * 100, 1)
