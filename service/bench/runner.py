"""The benchmark's phases, on a database and topics of its own, against the real service."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import platform
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from pydantic import SecretStr

from service.adapters.db import Pool, create_pool, migrate
from service.adapters.kafka import ensure_topics, send_batches
from service.bench import baselines, kafka_io, workload
from service.bench.options import BenchOptions, Report
from service.bench.process import ServiceProcess
from service.config import Settings
from service.domain.model import format_time, name_key

MESSAGE_BYTES = 300
SMALL_PRELOAD = 1000
# Followed by a number; the name key of the whole is this one's and the number.
PRELOADED_NAME = "Preloaded group "
LATENCY_WARMUP_S = 2.0
# The latency phase hands its commands to Kafka every 5 ms (as Kafka 4's clients linger by
# default), one record batch per partition, each command timed from when it was due.
# `send` per command, timed from its handover, gave higher percentiles (docs/benchmark.md):
# a wake-up per command and requests of partly filled batches are CPU the service shares.
LATENCY_TICK_MS = 5

Progress = Callable[[str], None]


@contextlib.contextmanager
def _no_collector_pauses() -> Iterator[None]:
    """The bench's own garbage collector stays out of what it times (as in `timeit`).

    A full collection of the bench's objects takes long enough to matter; every result that
    arrives meanwhile is stamped that much late, which is the bench's pause, not the
    service's (docs/benchmark.md)."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def bench_settings(settings: Settings, prefix: str, database_url: str) -> Settings:
    return settings.namespaced(prefix).model_copy(update={"database_url": SecretStr(database_url)})


@contextlib.asynccontextmanager
async def scratch_database(admin_url: str, name: str, keep: bool) -> AsyncIterator[str]:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield _with_database(admin_url, name)
    finally:
        if not keep:
            await _drop_database(admin_url, name)


async def _drop_database(admin_url: str, name: str, attempts: int = 30) -> None:
    """FORCE cannot end an autovacuum worker (it is not our role's); it is soon done."""
    conn = await asyncpg.connect(admin_url)
    try:
        for attempt in range(attempts):
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectInUseError):
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(1)
    finally:
        await conn.close()


async def run_bench(
    options: BenchOptions, settings: Settings, progress: Progress = lambda _: None
) -> Report:
    """Every figure of the benchmark, measured in this one run.

    `settings` gives the servers; the bench makes its own database and topics on them and
    drops them at the end (unless `keep`). With `external`, the service is the one already
    running with `settings`' topics; only new organizations are written there."""
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench-{run_id}"
    report = Report()
    report.figures["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    report.figures["sizes"] = {
        "commands": options.commands,
        "organizations": options.organizations,
        "latency_rate": options.rate,
        "latency_seconds": options.latency_seconds,
        "relay_backlog": options.relay_backlog,
        "preload": options.preload,
        "instances": 0 if options.external else options.instances,
        "relay_process": options.relay_process and not options.external,
    }
    admin_url = settings.database_url.get_secret_value()
    database = f"customer_groups_bench_{run_id}"
    async with scratch_database(admin_url, database, options.keep) as url:
        own = bench_settings(settings, prefix, url)
        target = settings if options.external else own
        if options.keep:
            report.figures["kept"] = {"database": database, "topic_prefix": prefix}
        pool = await create_pool(own, min_size=1)
        created_topics: list[str] = []
        try:
            await migrate(pool)
            if not options.external:
                await ensure_topics(own)
                created_topics += own.topics
            bench = _Bench(options, own, target, pool, report, progress, prefix)
            if "baselines" not in options.skip:
                roundtrip = f"{prefix}.roundtrip"
                await kafka_io.create_topic(own, roundtrip, own.topic_partitions_commands)
                created_topics.append(roundtrip)
                await bench.baselines(roundtrip)
            await bench.service_phases()
            if "relay" not in options.skip and not options.external:
                await bench.relay()
        finally:
            await pool.close()
            if created_topics and not options.keep:
                try:
                    await kafka_io.delete_topics(own, created_topics)
                except Exception as error:  # a cleanup failure must not hide the run's own
                    progress(f"could not delete topics {', '.join(created_topics)}: {error!r}")
    report.figures["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    _ratios(report)
    return report


@dataclass
class _Seen:
    results: int = 0
    events: int = 0
    codes: Counter[int] = field(default_factory=Counter)


async def arrivals(
    gained: Callable[[], Awaitable[dict[str, int]]], expected: dict[str, int], stall_s: float
) -> dict[str, float]:
    """When each topic had gained its expected number of records, polled every 10 ms; the
    topics that never got there (nothing new for `stall_s`) are left out."""
    arrived: dict[str, float] = {}
    last: dict[str, int] = {}
    last_progress = time.perf_counter()
    while len(arrived) < len(expected):
        await asyncio.sleep(0.01)
        counts = await gained()
        now = time.perf_counter()
        for topic, count in counts.items():
            if count >= expected[topic]:
                arrived.setdefault(topic, now)
        if counts != last:
            last, last_progress = counts, now
        elif now - last_progress > stall_s:
            break
    return arrived


@dataclass
class _Bench:
    options: BenchOptions
    own: Settings
    target: Settings
    pool: Pool
    report: Report
    progress: Progress
    prefix: str
    orgs: list[str] = field(init=False)
    services: list[ServiceProcess] = field(default_factory=list)
    peak_rss_mb: float = 0.0

    def __post_init__(self) -> None:
        self.orgs = workload.organizations(self.prefix, self.options.organizations)

    @property
    def figures(self) -> dict[str, Any]:
        return self.report.figures

    def problem(self, message: str) -> None:
        self.report.problems.append(message)
        self.progress(f"PROBLEM: {message}")

    async def baselines(self, roundtrip_topic: str) -> None:
        o = self.options
        found: dict[str, float] = {}
        self.figures["baselines"] = found
        # The same starting point as the throughput run, so the planner sees the same table.
        await self.reset()
        await self.preload(SMALL_PRELOAD)
        self.progress("baseline: raw asyncpg, one transaction per command, one connection")
        rows = baselines.rows_for(workload.plan(o.commands, self.orgs, self.tag("c1")))
        found["db_tx_per_s_c1"] = await baselines.transactions_per_s(
            self.pool, rows, 1, o.baseline_seconds
        )
        connections = self.own.database_pool_max
        self.progress(
            f"baseline: raw asyncpg, one transaction per command, {connections} connections"
        )
        rows = baselines.rows_for(workload.plan(o.commands, self.orgs, self.tag("cp")))
        found["db_tx_per_s_pool"] = await baselines.transactions_per_s(
            self.pool, rows, connections, o.baseline_seconds
        )
        self.figures["sizes"]["db_pool_connections"] = connections
        # The size of the service's transactions when it is busiest: a full batch, in lanes.
        size = max(1, self.own.command_batch_max // self.own.command_lanes)
        self.progress(f"baseline: raw asyncpg, set-based batches of {size}")
        rows = baselines.rows_for(workload.plan(o.commands, self.orgs, self.tag("cb")))
        found["db_batch_rows_per_s"] = await baselines.batch_rows_per_s(self.pool, rows, size)
        self.figures["sizes"]["db_batch_rows"] = size
        self.progress("baseline: raw aiokafka produce -> consume")
        found["kafka_roundtrip_msgs_per_s"] = await kafka_io.roundtrip_per_s(
            self.own, roundtrip_topic, o.commands, MESSAGE_BYTES
        )
        await self.reset()

    async def reset(self) -> None:
        await self.pool.execute("TRUNCATE customer_groups, outbox, processed_commands")

    async def preload(self, count: int) -> None:
        """`count` groups spread over the bench's organizations, written set-based."""
        await self.pool.execute(
            """
            INSERT INTO customer_groups (id, organization_id, name, name_key, description,
                                         platform_id, version, created_at, updated_at,
                                         deleted_at)
            SELECT 'grp_pre-' || i, ($1::text[])[1 + i % cardinality($1::text[])],
                   $3 || i, $4 || i, 'A group that was there before the benchmark',
                   NULL, 1, now(), now(), NULL
            FROM generate_series(1, $2::int) AS i
            """,
            self.orgs,
            count,
            PRELOADED_NAME,
            name_key(PRELOADED_NAME),
        )
        await self.pool.execute("VACUUM ANALYZE customer_groups")

    async def service_phases(self) -> None:
        o = self.options
        wanted = [p for p in ("throughput", "latency") if p not in o.skip]
        if not wanted:
            return
        instances = 0 if o.external else o.instances
        roles = ("consumer", "http") if o.relay_process else ()
        self.services = [ServiceProcess(self.target, roles) for _ in range(instances)]
        if o.relay_process and instances:
            self.services.append(ServiceProcess(self.target, ("relay",)))
        try:
            await asyncio.gather(*(service.start() for service in self.services))
            for service in self.services:
                self.progress(f"service started (pid {service.pid}, log {service.log_path})")
            self.figures["service_pids"] = [service.pid for service in self.services]
            await self.warm_up()
            # Latency first: the throughput runs' bulk leaves PostgreSQL checkpointing long
            # after they end, and latency measured after them had a much higher and wider
            # p99 (docs/benchmark.md).
            if "latency" in wanted:
                await self.latency()
            if "throughput" in wanted:
                await self.throughput_runs()
        except BaseException:
            for service in self.services:
                self.progress(f"the log of service {service.pid} ends with:\n{service.log_tail()}")
            raise
        finally:
            await asyncio.gather(*(service.stop(keep_log=o.keep) for service in self.services))
            for service in self.services:
                self.peak_rss_mb = max(self.peak_rss_mb, service.peak_rss_mb)
            if self.services:
                self.figures["rss_mb"] = round(self.peak_rss_mb, 1)
            self.services = []

    def cpu_seconds(self) -> float | None:
        """CPU time all service processes have used so far."""
        if not self.services:
            return None
        return sum(service.cpu_seconds() for service in self.services)

    async def warm_up(self) -> None:
        """Until the service answers (its consumers own the partitions), nothing is timed."""
        planned = workload.plan(20, [f"{self.orgs[0]}-warmup"], self.tag("w"))
        if not (await self.drive(planned, stall_s=90))["complete"]:
            raise RuntimeError("the service did not answer the warm-up commands")

    def tag(self, name: str) -> str:
        """Unique to this run, so ids and names never meet an earlier run's on a shared topic."""
        return f"{self.prefix}-{name}"

    async def drive(self, planned: list[workload.Planned], stall_s: float = 30) -> dict[str, Any]:
        """Send `planned` as fast as possible and time it by the topics' end offsets; what
        came back is read afterwards and checked against the plan."""
        t = self.target
        orgs = {p.organization_id.encode() for p in planned}
        groups = {p.group_id.encode() for p in planned if p.eventful}
        events_expected = workload.expected_events(planned)
        seen = _Seen()

        def on_record(record: kafka_io.Record) -> None:
            if record.topic == t.topic_results:
                if record.key in orgs:
                    seen.codes[orjson.loads(record.value)["code"]] += 1
                    seen.results += 1
            elif record.key in groups:
                seen.events += 1

        offsets = kafka_io.Offsets(t, [t.topic_events, t.topic_results])
        await offsets.start()
        client = kafka_io.producer(t)
        await client.start()
        try:
            records = workload.encode(planned)
            with _no_collector_pauses():
                cpu_before = self.cpu_seconds()
                started = time.perf_counter()
                await kafka_io.produce(client, t.topic_commands, records)
                produced = time.perf_counter()
                expected = {t.topic_events: events_expected, t.topic_results: len(planned)}
                arrived = await arrivals(offsets.gained, expected, stall_s)
                cpu_after = self.cpu_seconds()
            await offsets.read(on_record)
        finally:
            await client.stop()
            await offsets.stop()
        gave_up = time.perf_counter()
        last_event = arrived.get(t.topic_events, gave_up)
        last_result = arrived.get(t.topic_results, gave_up)
        outcome: dict[str, Any] = {
            "complete": len(arrived) == len(expected),
            "seconds": max(last_event, produced) - started,
            "produce_seconds": produced - started,
            # The consumer's share: the last result came this long after the first command.
            "results_seconds": max(last_result, produced) - started,
            "results": seen.results,
            "events": seen.events,
            "events_expected": events_expected,
        }
        if cpu_before is not None:
            cpu = (cpu_after or 0.0) - cpu_before
            outcome["service_cpu_cores"] = round(cpu / outcome["seconds"], 2)
        codes = workload.expected_codes(planned)
        if seen.results != len(planned):
            self.problem(f"{len(planned)} commands sent but {seen.results} results seen")
        if seen.events != events_expected:
            self.problem(f"{events_expected} events expected but {seen.events} seen")
        if seen.codes != codes:
            self.problem(f"result codes {dict(seen.codes)} differ from the plan's {dict(codes)}")
        return outcome

    async def throughput_runs(self) -> None:
        """One run, or with a large --preload four: small, large, large again on top of the
        first, small. One run against one varies here by more than the comparison's
        tolerance (docs/benchmark.md); the mean of two runs each, in this order, halves that
        and cancels a steady drift."""
        o = self.options
        compare = not (o.preload <= SMALL_PRELOAD or o.external)
        plan = [(SMALL_PRELOAD, True), (o.preload, True), (o.preload, False), (SMALL_PRELOAD, True)]
        runs = plan if compare else [(o.preload, True)]
        by_size: dict[str, list[float]] = {}
        for index, (size, fresh) in enumerate(runs):
            if fresh and not o.external:
                await self.reset()
                if size:
                    self.progress(f"preloading {size:,} groups")
                    await self.preload(size)
            self.progress(f"throughput: {o.commands:,} commands, {size:,} groups there before")
            planned = workload.plan(o.commands, self.orgs, self.tag(f"t{index}"))
            outcome = await self.drive(planned)
            by_size.setdefault(str(size), []).append(round(len(planned) / outcome["seconds"], 1))
            if size == o.preload:
                self.figures["throughput"] = {**outcome, "commands": len(planned)}
        means = {size: round(statistics.mean(found), 1) for size, found in by_size.items()}
        self.figures["commands_per_s"] = means[str(o.preload)]
        if compare:
            self.figures["groups_preexisting"] = means
            self.figures["groups_preexisting_runs"] = by_size
            small, large = means[str(SMALL_PRELOAD)], means[str(o.preload)]
            self.figures["groups_preexisting_change_pct"] = round((large / small - 1) * 100, 1)

    async def latency(self) -> None:
        """Each command's time from its send to its event (and to its result), at a fixed
        offered rate; the result leg is the consumer's share, the rest is the relay's."""
        o, t = self.options, self.target
        if not o.external:
            await self.reset()
            await self.preload(SMALL_PRELOAD)
        count = max(1, int(o.rate * o.latency_seconds))
        # Right after the tables were emptied, PostgreSQL spends the first seconds on
        # statistics and new pages (slow single transactions, docs/benchmark.md); a service
        # that has been running does not, so the first seconds at the rate are not measured.
        warm = int(o.rate * LATENCY_WARMUP_S)
        self.progress(f"latency: {count:,} commands at {o.rate:,}/s, after {warm:,} unmeasured")
        planned = workload.plan(warm + count, self.orgs, self.tag("l"))
        sent: dict[str, float] = {}
        to_event: dict[str, float] = {}
        to_result: dict[str, float] = {}

        def on_record(record: kafka_io.Record, seen_at: float) -> None:
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
            with _no_collector_pauses():
                cpu_before = self.cpu_seconds()
                started = time.perf_counter()
                offered = await _send_paced(
                    client, t.topic_commands, planned, o.rate, sent, measure_from=warm
                )
                await tail.wait(lambda: len(to_event) >= expected, stall_s=15)
                elapsed = time.perf_counter() - started
        finally:
            await client.stop()
            await tail.stop()
        if len(to_event) < expected:
            self.problem(f"latency: {expected - len(to_event)} of {expected} events never came")
        if not to_event:
            return
        self.figures["latency_ms"] = _percentiles_ms(list(to_event.values()))
        self.figures["latency_to_result_ms"] = _percentiles_ms(list(to_result.values()))
        relay_leg = [to_event[c] - to_result[c] for c in to_event if c in to_result]
        self.figures["latency_relay_leg_ms"] = _percentiles_ms(relay_leg)
        self.figures["latency_rate"] = o.rate
        self.figures["latency_offered_per_s"] = round(offered, 1)
        if cpu_before is not None:
            cpu = (self.cpu_seconds() or 0.0) - cpu_before
            self.figures["latency_service_cpu_cores"] = round(cpu / elapsed, 2)

    async def relay(self) -> None:
        """A relay-only service drains a backlog that appears in the outbox all at once."""
        o, s = self.options, self.own
        await self.reset()
        service = ServiceProcess(s, roles=("relay",))
        await service.start()
        self.progress(f"relay-only service started (pid {service.pid})")
        offsets = kafka_io.Offsets(s, [s.topic_events])
        await offsets.start()
        try:
            self.progress(f"relay: committing a backlog of {o.relay_backlog:,} outbox rows")
            await self.fill_outbox(o.relay_backlog)
            cpu_before = service.cpu_seconds()
            started = time.perf_counter()
            arrived = await arrivals(offsets.gained, {s.topic_events: o.relay_backlog}, 30)
            finished = arrived.get(s.topic_events, time.perf_counter())
            seen = (await offsets.gained())[s.topic_events]
            cpu_cores = (service.cpu_seconds() - cpu_before) / (time.perf_counter() - started)
            unpublished = await self._unpublished_after(5)
        except BaseException:
            self.progress(f"the relay's log ends with:\n{service.log_tail()}")
            raise
        finally:
            await offsets.stop()
            await service.stop(keep_log=o.keep)
        if seen != o.relay_backlog:
            self.problem(f"relay: {o.relay_backlog} events expected but {seen} published")
        if unpublished:
            self.problem(f"relay: {unpublished} outbox rows still unpublished")
        self.figures["relay_events_per_s"] = round(seen / (finished - started), 1)
        self.figures["relay_service_cpu_cores"] = round(cpu_cores, 2)
        self.figures["rss_mb_relay"] = round(service.peak_rss_mb, 1)
        self.peak_rss_mb = max(self.peak_rss_mb, service.peak_rss_mb)
        self.figures["rss_mb"] = round(self.peak_rss_mb, 1)

    async def _unpublished_after(self, seconds: float) -> int:
        """Rows are marked after Kafka acknowledged them, a moment after they are visible."""
        deadline = time.perf_counter() + seconds
        while True:
            count: int = await self.pool.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            )
            if count == 0 or time.perf_counter() > deadline:
                return count
            await asyncio.sleep(0.1)

    async def fill_outbox(self, count: int) -> None:
        """`count` group.created rows with realistic payloads, committed in one transaction."""
        now = format_time(await self.pool.fetchval("SELECT now()"))
        await self.pool.execute(
            """
            INSERT INTO outbox (event_type, organization_id, group_id, group_version,
                                command_id, traceparent, payload, occurred_at)
            SELECT 'group.created', o.org, 'grp_relay-' || i, 1, 'relay-' || i, NULL,
                   json_build_object(
                       'id', 'grp_relay-' || i, 'organization_id', o.org,
                       'name', 'Relay group ' || i,
                       'description', 'Customers of segment ' || i || ' with premium benefits',
                       'platform_id', NULL, 'version', 1, 'created_at', $3::text,
                       'updated_at', $3::text, 'deleted_at', NULL),
                   now()
            FROM generate_series(1, $2::int) AS i,
                 LATERAL (SELECT ($1::text[])[1 + i % cardinality($1::text[])] AS org) AS o
            """,
            self.orgs,
            count,
            now,
        )


async def _send_paced(
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
        pending += await send_batches(client, topic, [(k, v, []) for k, v in records[done:due]])
        done = due
        await asyncio.sleep(LATENCY_TICK_MS / 1000)
    await asyncio.gather(*pending)
    return len(planned) / (time.perf_counter() - started)


def _percentiles_ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds) or [0.0]
    picks = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
    found = {q: ordered[min(len(ordered) - 1, int(len(ordered) * f))] for q, f in picks.items()}
    return {q: round(v * 1000, 2) for q, v in (found | {"max": ordered[-1]}).items()}


def _ratios(report: Report) -> None:
    f = report.figures
    base = f.get("baselines", {})
    ratios: dict[str, float] = {}
    pairs = [
        ("commands_per_s", "db_tx_per_s_c1"),
        ("commands_per_s", "db_tx_per_s_pool"),
        ("commands_per_s", "db_batch_rows_per_s"),
        ("commands_per_s", "kafka_roundtrip_msgs_per_s"),
        ("relay_events_per_s", "kafka_roundtrip_msgs_per_s"),
    ]
    for ours, theirs in pairs:
        if f.get(ours) and base.get(theirs):
            ratios[f"{ours}/{theirs}"] = round(f[ours] / base[theirs], 3)
    f["ratios"] = ratios
