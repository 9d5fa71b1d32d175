"""The tracing phase: the throughput workload through a service that exports every span
(`OTEL_TRACES_SAMPLER=always_on`) to an OTLP/HTTP receiver of the bench's own, next to the
same workload with tracing off, in this run: off, on, on, off twice, each run with half of
`--commands`, so a steady drift cancels."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections.abc import Mapping
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from service.bench import throughput, workload
from service.bench.context import BenchRun
from service.bench.service_phases import started, warm_up
from service.config import Settings

# Twice off, on, on, off, each with half the commands: this machine's speed drifts over tens
# of seconds, so a finer interleave cancels more of it than one round of whole runs.
ORDER = (False, True, True, False) * 2


class SpanSink:
    """Accepts OTLP/HTTP trace exports on 127.0.0.1 and counts their spans: decoded by
    count(), after the timed window, as a collector on another machine would take none of
    the service's CPU."""

    def __init__(self) -> None:
        self.spans = 0
        self.requests = 0
        self._bodies: list[bytes] = []
        self._server: asyncio.Server | None = None

    def count(self) -> None:
        for body in self._bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            self.spans += sum(
                len(scope.spans)
                for resource in request.resource_spans
                for scope in resource.scope_spans
            )
        self._bodies.clear()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def environment(self) -> dict[str, str]:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_TRACES_SAMPLER": "always_on",
        }

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
            while await reader.readline():
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                self._bodies.append(await reader.readexactly(length))
                self.requests += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        writer.close()


def _per_run(run: BenchRun) -> int:
    return max(run.options.commands // 2, 1)


async def _throughput(
    run: BenchRun, target: Settings, index: int, environment: Mapping[str, str] | None
) -> tuple[float, float | None, float]:
    """Commands per second, the service's CPU time per command in microseconds, and the
    spans it could not export."""
    await run.database.reset()
    async with started(run, target, environment) as services:
        await warm_up(run, services, tag=f"trw{index}")
        planned = workload.plan(_per_run(run), run.orgs, run.tag(f"tr{index}"))
        outcome = await throughput.drive(run, services, planned)
        lost = 0.0
        for process in services.processes:
            for reason in ("queue_full", "not_exported"):
                sample = f'customer_groups_spans_lost_total{{reason="{reason}"}}'
                lost += await process.metric(sample) or 0.0
    seconds: float = outcome["seconds"]
    cores = outcome.get("service_cpu_cores")
    cpu_us = None if cores is None else round(cores * seconds / len(planned) * 1e6, 1)
    return round(len(planned) / seconds, 1), cpu_us, lost


async def measure(run: BenchRun, target: Settings) -> None:
    sink = SpanSink()
    await sink.start()
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    spans_lost = 0.0
    try:
        for index, traced in enumerate(ORDER):
            state = "on" if traced else "off"
            run.progress(f"tracing: {_per_run(run):,} commands, tracing {state}")
            environment = sink.environment if traced else None
            rate, cpu_us, lost = await _throughput(run, target, index, environment)
            sink.count()
            spans_lost += lost
            rates[traced].append(rate)
            if cpu_us is not None:
                cpu[traced].append(cpu_us)
    finally:
        await sink.stop()
    off, on = statistics.mean(rates[False]), statistics.mean(rates[True])
    figures: dict[str, Any] = {
        "commands_per_s_off": rates[False],
        "commands_per_s_on": rates[True],
        "ratio_on_off": round(on / off, 3),
        # Less noisy than the rates on a shared machine: what each command cost the service.
        "cpu_us_per_command_off": cpu[False],
        "cpu_us_per_command_on": cpu[True],
        "spans_exported": sink.spans,
        "spans_per_traced_command": round(sink.spans / (len(ORDER) // 2 * _per_run(run)), 2),
        "export_requests": sink.requests,
        # Dropped by the service (queue full) or refused: counted at the end of each run.
        "spans_lost": spans_lost,
    }
    if cpu[False] and cpu[True]:
        figures["cpu_ratio_off_on"] = round(
            statistics.mean(cpu[False]) / statistics.mean(cpu[True]), 3
        )
    run.figures["tracing"] = figures
