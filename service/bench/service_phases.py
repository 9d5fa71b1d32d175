"""The phases that drive the service under test, run in processes of the bench's own unless
it is `--external`: latency, then throughput; and how those processes are started, for them
and for the members phase."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from service.bench import latency, throughput, workload
from service.bench.context import BenchRun
from service.bench.process import ServiceProcess, Services
from service.config import Settings


async def measure(run: BenchRun, target: Settings) -> None:
    o = run.options
    wanted = [p for p in ("throughput", "latency") if p not in o.skip]
    if not wanted:
        return
    async with started(run, target) as services:
        run.figures["service_pids"] = [process.pid for process in services.processes]
        await warm_up(run, services)
        # Latency first: the throughput runs' bulk leaves PostgreSQL checkpointing long
        # after they end, and latency measured after them had a much higher and wider
        # p99 (docs/benchmark.md).
        if "latency" in wanted:
            await latency.measure(run, services)
        if "throughput" in wanted:
            await throughput.measure(run, services)


@contextlib.asynccontextmanager
async def started(
    run: BenchRun, target: Settings, environment: Mapping[str, str] | None = None
) -> AsyncIterator[Services]:
    """The service in the layout the options ask for (none of its own when `external`),
    with `environment` added to its own, stopped at the end, its peak memory noted."""
    o = run.options
    instances = 0 if o.external else o.instances
    roles = ("consumer", "http") if o.relay_process else ()
    processes = [ServiceProcess(target, roles, environment) for _ in range(instances)]
    if o.relay_process and instances:
        processes.append(ServiceProcess(target, ("relay",), environment))
    try:
        await asyncio.gather(*(process.start() for process in processes))
        for process in processes:
            run.progress(f"service started (pid {process.pid}, log {process.log_path})")
        yield Services(target, processes)
    except BaseException:
        for process in processes:
            run.progress(f"the log of service {process.pid} ends with:\n{process.log_tail()}")
        raise
    finally:
        await asyncio.gather(*(process.stop(keep_log=o.keep) for process in processes))
        for process in processes:
            run.note_rss(process.peak_rss_mb)


async def warm_up(run: BenchRun, services: Services, tag: str = "w") -> None:
    """Until the service answers (its consumers own the partitions), nothing is timed."""
    planned = workload.plan(20, [f"{run.orgs[0]}-warmup"], run.tag(tag))
    if not (await throughput.drive(run, services, planned, stall_s=90))["complete"]:
        raise RuntimeError("the service did not answer the warm-up commands")
