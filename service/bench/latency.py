"""The latency phase: each command's time from its send to its event (and to its result), at
a fixed offered rate; the result leg is the consumer's share, the rest is the relay's."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson

from service.adapters.kafka import Record
from service.bench import kafka_io, workload
from service.bench.context import BenchRun
from service.bench.database import SMALL_PRELOAD
from service.bench.process import Services
from service.bench.timing import cpu_cores, no_collector_pauses

LATENCY_WARMUP_S = 2.0
# The latency phase hands its commands to Kafka every 5 ms (as Kafka 4's clients linger by
# default), one record batch per partition, each command timed from when it was due.
# `send` per command, timed from its handover, gave higher percentiles (docs/benchmark.md):
# a wake-up per command and requests of partly filled batches are CPU the service shares.
LATENCY_TICK_MS = 5


@dataclass(frozen=True)
class LatencySample:
    """Each measured command's time from when it was due to its event and to its result."""

    to_event: dict[str, float]
    to_result: dict[str, float]
    offered_per_s: float
    service_cpu_cores: float | None

    def relay_leg(self) -> list[float]:
        """Each command's event after its result: the result goes out after the commit, so
        this is the relay's time from the commit on, whichever relay it is."""
        return [self.to_event[c] - self.to_result[c] for c in self.to_event if c in self.to_result]


async def measure(run: BenchRun, services: Services) -> None:
    o = run.options
    found = await sample(run, services)
    if found is None:
        return
    run.figures["latency_ms"] = percentiles_ms(list(found.to_event.values()))
    run.figures["latency_to_result_ms"] = percentiles_ms(list(found.to_result.values()))
    run.figures["latency_relay_leg_ms"] = percentiles_ms(found.relay_leg())
    run.figures["latency_rate"] = o.rate
    run.figures["latency_offered_per_s"] = round(found.offered_per_s, 1)
    if found.service_cpu_cores is not None:
        run.figures["latency_service_cpu_cores"] = found.service_cpu_cores


async def sample(
    run: BenchRun, services: Services, name: str = "latency", tag: str = "l"
) -> LatencySample | None:
    """The options' rate for their latency_seconds, commands tagged `tag`; None if no event
    came back at all."""
    o, t = run.options, services.settings
    if not o.external:
        await run.database.reset()
        await run.database.preload(SMALL_PRELOAD)
    count = max(1, int(o.rate * o.latency_seconds))
    # Right after the tables were emptied, PostgreSQL spends the first seconds on
    # statistics and new pages (slow single transactions, docs/benchmark.md); a service
    # that has been running does not, so the first seconds at the rate are not measured.
    warm = int(o.rate * LATENCY_WARMUP_S)
    run.progress(f"{name}: {count:,} commands at {o.rate:,}/s, after {warm:,} unmeasured")
    planned = workload.plan(warm + count, run.orgs, run.tag(tag))
    sent: dict[str, float] = {}
    to_event: dict[str, float] = {}
    to_result: dict[str, float] = {}

    def on_record(record: Record, seen_at: float) -> None:
        if record.topic == t.topic_results:
            command_id = orjson.loads(record.value)["command_id"]
            if command_id in sent:
                to_result.setdefault(command_id, seen_at - sent[command_id])
            return
        for key, value in record.headers:
            if key == "ce_commandid":
                if (command_id := value.decode()) in sent:
                    to_event.setdefault(command_id, seen_at - sent[command_id])
                return

    tail = kafka_io.Tail(t, [t.topic_events, t.topic_results], on_record)
    await tail.start()
    client = kafka_io.producer(t)
    await client.start()
    expected = workload.expected_events(planned[warm:])
    try:
        with no_collector_pauses():
            cpu_before = services.cpu_seconds()
            started = time.perf_counter()
            offered = await send_paced(
                client, t.topic_commands, planned, o.rate, sent, measure_from=warm
            )
            await tail.wait(lambda: len(to_event) >= expected, stall_s=15)
            elapsed = time.perf_counter() - started
    finally:
        await client.stop()
        await tail.stop()
    if len(to_event) < expected:
        run.problem(f"{name}: {expected - len(to_event)} of {expected} events never came")
    if not to_event:
        return None
    cores = cpu_cores(cpu_before, services.cpu_seconds(), elapsed)
    return LatencySample(to_event, to_result, offered, cores)


async def send_paced(
    client: Any,
    topic: str,
    planned: list[workload.Planned],
    rate: int,
    sent: dict[str, float],
    *,
    measure_from: int = 0,
) -> float:
    """Send at `rate`/s, noting when each eventful command from `measure_from` on was due;
    the rate achieved. Every LATENCY_TICK_MS the commands due by then go as one record
    batch per partition, as a producer lingering that long would send them; a command's
    time starts when it was due, so neither that wait nor a late wake-up escapes the figure."""
    records = workload.encode(planned)
    pending: list[asyncio.Future[Any]] = []
    started = time.perf_counter()
    done = 0
    while done < len(planned):
        due = min(len(planned), int((time.perf_counter() - started) * rate) + 1)
        for index in range(done, due):
            if planned[index].eventful and index >= measure_from:
                sent[planned[index].command_id] = started + index / rate
        pending += await kafka_io.send(client, topic, records[done:due])
        done = due
        await asyncio.sleep(LATENCY_TICK_MS / 1000)
    await asyncio.gather(*pending)
    return len(planned) / (time.perf_counter() - started)


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds) or [0.0]
    picks = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
    found = {q: ordered[min(len(ordered) - 1, int(len(ordered) * f))] for q, f in picks.items()}
    return {q: round(v * 1000, 2) for q, v in (found | {"max": ordered[-1]}).items()}
