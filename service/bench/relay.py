"""The relay phase: a relay-only service drains a backlog that appears in the outbox all at
once."""

from __future__ import annotations

import time

from service.bench import kafka_io
from service.bench.context import BenchRun
from service.bench.process import ServiceProcess
from service.bench.timing import arrivals, cpu_cores
from service.config import Settings


async def measure(run: BenchRun, own: Settings) -> None:
    o = run.options
    await run.database.reset()
    service = ServiceProcess(own, roles=("relay",))
    await service.start()
    run.progress(f"relay-only service started (pid {service.pid})")
    offsets = kafka_io.Offsets(own, [own.topic_events])
    await offsets.start()
    try:
        run.progress(f"relay: committing a backlog of {o.relay_backlog:,} outbox rows")
        await run.database.fill_outbox(o.relay_backlog)
        cpu_before = service.cpu_seconds()
        started = time.perf_counter()
        arrived = await arrivals(offsets.gained, {own.topic_events: o.relay_backlog}, 30)
        finished = arrived.get(own.topic_events, time.perf_counter())
        seen = (await offsets.gained())[own.topic_events]
        cores = cpu_cores(cpu_before, service.cpu_seconds(), time.perf_counter() - started)
        unpublished = await run.database.unpublished_after(5)
    except BaseException:
        run.progress(f"the relay's log ends with:\n{service.log_tail()}")
        raise
    finally:
        await offsets.stop()
        await service.stop(keep_log=o.keep)
    if seen != o.relay_backlog:
        run.problem(f"relay: {o.relay_backlog} events expected but {seen} published")
    if unpublished:
        run.problem(f"relay: {unpublished} outbox rows still unpublished")
    run.figures["relay_events_per_s"] = round(seen / (finished - started), 1)
    run.figures["relay_service_cpu_cores"] = cores
    run.figures["rss_mb_relay"] = round(service.peak_rss_mb, 1)
    run.note_rss(service.peak_rss_mb)
