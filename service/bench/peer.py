"""The peer phase (`--peer debezium`): our relay against Debezium's outbox connector, both
reading the same database (the run's own, on deploy/local/debezium.sh's logical-replication
cluster) and writing the bench's own events topic. Each drains the same backlog, then relays
a service's commands at the latency phase's rate; for Debezium the service runs without its
relay."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import SecretStr

from service.adapters.postgres.db import Pool, create_pool, migrate
from service.bench import kafka_io, latency, service_phases
from service.bench.context import BenchRun
from service.bench.database import BenchDatabase
from service.bench.process import ServiceProcess, Services, free_port, memory_kb
from service.bench.scratch import scratch_database
from service.bench.timing import arrivals, cpu_cores
from service.config import Settings

DEBEZIUM_SH = Path(__file__).resolve().parents[2] / "deploy" / "local" / "debezium.sh"
TRUNCATE_OUTBOX = "TRUNCATE outbox"
COUNT_SLOTS = "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
DROP_INACTIVE_SLOTS = """
    SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
    WHERE database = current_database() AND NOT active
    """
SLOT_STREAMING = """
    SELECT EXISTS (SELECT 1 FROM pg_replication_slots
                   WHERE database = current_database() AND slot_type = 'logical' AND active)
    """
# Both relays are long-running processes in production, and a JVM is slow on its first
# records until it has compiled its hot paths: each relay drains this fraction of the
# backlog untimed first.
WARMUP_DIVISOR = 10
SLOT_WAIT_S = 60


@dataclass(frozen=True)
class Relayed:
    """What one relay did in the phase."""

    events_per_s: float
    cpu_cores: float | None
    rss_mb: float
    latency: latency.LatencySample | None


async def measure(run: BenchRun, own: Settings) -> None:
    """On a database, replication slot and Connect REST port of the run's own, so that it
    shares nothing with another user of the logical cluster; Connect is stopped at the end,
    whatever happened, and so is the cluster if the phase started it."""
    script = Debezium(own)
    async with _logical_cluster(run, script) as cluster_url:
        name = run.prefix.replace("-", "_")
        database = f"customer_groups_peer_{name.removeprefix('bench_')}"
        async with scratch_database(cluster_url, database, run.options.keep) as url:
            logical = own.model_copy(update={"database_url": SecretStr(url)})
            scoped = Debezium(
                own,
                {
                    "DEBEZIUM_DATABASE_URL": url,
                    "DEBEZIUM_SLOT_NAME": name,
                    "DEBEZIUM_REST_PORT": str(free_port()),
                },
            )
            pool = await create_pool(logical, min_size=1)
            peer_run = replace(run, database=BenchDatabase(pool, run.orgs))
            try:
                await migrate(pool)
                ours = await _ours(peer_run, logical)
                theirs = await _debezium(peer_run, logical, scoped)
            finally:
                try:
                    await scoped.run("reset")
                finally:
                    await _drop_slots(pool)
                    await pool.close()
                    run.note_rss(peer_run.peak_rss_mb)
    _figures(run, ours, theirs)


@contextlib.asynccontextmanager
async def _logical_cluster(run: BenchRun, script: Debezium) -> AsyncIterator[str]:
    """The cluster's URL; stopped at the end unless it was running before (someone's)."""
    url = await script.run("url")
    was_running = await _answers(url)
    run.progress("peer: on the logical cluster of deploy/local/debezium.sh")
    try:
        await script.run("db")
        yield url
    finally:
        if not was_running:
            await script.run("stop")


async def _answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


async def _drop_slots(pool: Pool) -> None:
    """A slot holds the cluster's WAL and its database; the walsender of a Connect just
    stopped may still hold it active for a moment."""
    deadline = time.perf_counter() + SLOT_WAIT_S
    while await pool.fetchval(COUNT_SLOTS) and time.perf_counter() < deadline:
        await pool.execute(DROP_INACTIVE_SLOTS)
        await asyncio.sleep(0.1)


async def _ours(run: BenchRun, logical: Settings) -> Relayed:
    await run.database.reset()
    relay = ServiceProcess(logical, roles=("relay",))
    await relay.start()
    run.progress(f"peer: our relay-only service started (pid {relay.pid})")
    try:
        per_s, cores = await _drain(run, logical, "our relay", relay.cpu_seconds)
    except BaseException:
        run.progress(f"the relay's log ends with:\n{relay.log_tail()}")
        raise
    finally:
        await relay.stop(keep_log=run.options.keep)
    run.note_rss(relay.peak_rss_mb)
    async with service_phases.started(run, logical) as services:
        found = await _latency(run, services, "our relay", "po")
    return Relayed(per_s, cores, relay.peak_rss_mb, found)


async def _debezium(run: BenchRun, logical: Settings, script: Debezium) -> Relayed:
    await run.database.reset()
    run.progress("peer: starting Kafka Connect with Debezium's outbox connector")
    await script.run("start")
    pid = int(await script.run("pid"))
    await _slot_streaming(run)
    per_s, cores = await _drain(run, logical, "Debezium", lambda: cpu_seconds(pid))
    rss_mb = peak_rss_kb(pid) / 1024
    async with service_phases.started(run, logical, {"RELAY_ENABLED": "false"}) as services:
        found = await _latency(run, services, "Debezium", "pd")
    return Relayed(per_s, cores, rss_mb, found)


async def _slot_streaming(run: BenchRun) -> None:
    """With snapshot.mode no_data, a row committed before the slot exists is never sent."""
    deadline = time.perf_counter() + SLOT_WAIT_S
    while not await run.database.pool.fetchval(SLOT_STREAMING):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"Debezium's replication slot was not streaming in {SLOT_WAIT_S}s")
        await asyncio.sleep(0.2)


async def _drain(
    run: BenchRun, logical: Settings, who: str, cpu_of: Callable[[], float]
) -> tuple[float, float | None]:
    """Events/s and cores of draining the relay_backlog, after an untimed smaller one."""
    backlog = run.options.relay_backlog
    topic = logical.topic_events
    for count, timed in ((-(-backlog // WARMUP_DIVISOR), False), (backlog, True)):
        await run.database.pool.execute(TRUNCATE_OUTBOX)
        offsets = kafka_io.Offsets(logical, [topic])
        await offsets.start()
        try:
            run.progress(
                f"peer: {who} drains {count:,} outbox rows" + ("" if timed else " (warm-up)")
            )
            await run.database.fill_outbox(count)
            cpu_before = cpu_of()
            started = time.perf_counter()
            arrived = await arrivals(offsets.gained, {topic: count}, 30)
            finished = arrived.get(topic, time.perf_counter())
            seen = (await offsets.gained())[topic]
            cores = cpu_cores(cpu_before, cpu_of(), time.perf_counter() - started)
        finally:
            await offsets.stop()
        if seen != count and not timed:
            raise RuntimeError(f"peer: {who} published {seen} of {count} warm-up events")
        if seen != count:
            run.problem(f"peer: {who} published {seen} of {count} events")
    return round(seen / (finished - started), 1), cores


async def _latency(
    run: BenchRun, services: Services, who: str, tag: str
) -> latency.LatencySample | None:
    await service_phases.warm_up(run, services, tag=f"{tag}w")
    return await latency.sample(run, services, f"peer, {who}", tag=tag)


def _figures(run: BenchRun, ours: Relayed, theirs: Relayed) -> None:
    f = run.figures
    for name, relayed in (("ours", ours), ("debezium", theirs)):
        f[f"peer_{name}_events_per_s"] = relayed.events_per_s
        f[f"peer_{name}_cpu_cores"] = relayed.cpu_cores
        f[f"peer_{name}_rss_mb"] = round(relayed.rss_mb, 1)
        if relayed.latency is not None:
            f[f"peer_{name}_latency_ms"] = latency.percentiles_ms(relayed.latency.relay_leg())
    if theirs.events_per_s:
        f["peer_events_per_s_ratio"] = round(ours.events_per_s / theirs.events_per_s, 3)
    ours_p99 = f.get("peer_ours_latency_ms", {}).get("p99")
    theirs_p99 = f.get("peer_debezium_latency_ms", {}).get("p99")
    if ours_p99 is not None and theirs_p99:
        f["peer_p99_ratio"] = round(ours_p99 / theirs_p99, 3)
    o = run.options
    f["peer"] = {
        "peer": o.peer,
        "backlog": o.relay_backlog,
        "warmup_backlog": -(-o.relay_backlog // WARMUP_DIVISOR),
        "latency_rate": o.rate,
        "latency_seconds": o.latency_seconds,
        **{name: _details(relayed) for name, relayed in (("ours", ours), ("debezium", theirs))},
    }


def _details(relayed: Relayed) -> dict[str, Any]:
    """The whole latency of the commands each relay carried, for context."""
    found = relayed.latency
    if found is None:
        return {}
    return {
        "send_to_event_ms": latency.percentiles_ms(list(found.to_event.values())),
        "send_to_result_ms": latency.percentiles_ms(list(found.to_result.values())),
        "offered_per_s": round(found.offered_per_s, 1),
        "service_cpu_cores": found.service_cpu_cores,
    }


@dataclass(frozen=True)
class Debezium:
    """deploy/local/debezium.sh for the bench's events topic, with `scope` (its database,
    slot, REST port) added to the environment; the script's log goes to stderr."""

    settings: Settings
    scope: Mapping[str, str] = field(default_factory=dict)

    async def run(self, command: str) -> str:
        environment = {
            **os.environ,
            "DEBEZIUM_EVENTS_TOPIC": self.settings.topic_events,
            "DEBEZIUM_CE_SOURCE": self.settings.ce_source,
            "DEBEZIUM_SNAPSHOT_MODE": "no_data",
            "KAFKA_BOOTSTRAP_SERVERS": self.settings.kafka_bootstrap_servers,
            **self.scope,
        }
        process = await asyncio.create_subprocess_exec(
            str(DEBEZIUM_SH),
            command,
            env=environment,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{DEBEZIUM_SH} {command} exited with status {process.returncode}")
        return out.decode().strip()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kb(pid: int) -> int:
    memory = memory_kb(pid)
    return max(memory.get("VmHWM", 0), memory.get("VmRSS", 0))
