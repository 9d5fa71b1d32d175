"""A chaos run: a database and topics of its own, the instances, the load, the faults at
their times, then everything read back and checked."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson

from service.adapters.kafka.topics import ensure_topics
from service.adapters.postgres.db import create_pool, migrate
from service.bench import kafka_io
from service.bench.scratch import bench_settings, scratch_database, scratch_topics
from service.chaos.checker import Message, ReadBack, StoredGroup, check
from service.chaos.faults import Cluster, available, describe
from service.chaos.load import Load
from service.chaos.options import ChaosOptions
from service.config import Settings

Progress = Callable[[str], None]


async def run_chaos(
    options: ChaosOptions, settings: Settings, progress: Progress = lambda _: None
) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    prefix = f"chaos-{run_id}"
    admin_url = settings.database_url.get_secret_value()
    async with scratch_database(admin_url, f"customer_groups_chaos_{run_id}", False) as url:
        own = bench_settings(settings, prefix, url)
        pool = await create_pool(own, min_size=1)
        try:
            await migrate(pool)
        finally:
            await pool.close()
        async with scratch_topics(own, False, progress) as topics:
            await ensure_topics(own)
            topics.extend(own.topics)
            return await _run(options, own, progress)


async def _run(options: ChaosOptions, settings: Settings, progress: Progress) -> dict[str, Any]:
    watched = [
        settings.topic_results,
        settings.topic_events,
        settings.topic_state,
        settings.topic_commands,
        settings.topic_dlq,
    ]
    offsets = kafka_io.Offsets(settings, watched)
    await offsets.start()
    cluster = Cluster(settings, options.instances, options.relays, options.seed)
    organizations = [f"org_chaos_{n}" for n in range(options.organizations)]
    load = Load(settings, organizations, options.rate, options.seed)
    try:
        await cluster.start()
        progress(f"{len(cluster.processes)} processes started; load at {options.rate}/s")
        stop = asyncio.Event()
        sending = asyncio.create_task(load.run(stop))
        started = time.monotonic()
        faults, skipped = await _inject(cluster, options, started, progress)
        await asyncio.sleep(max(0.0, started + options.seconds - time.monotonic()))
        stop.set()
        await sending
        progress(f"load stopped after {load.sent.sends:,} sends; waiting for the service")
        settled = await _settle(settings, len(load.sent.at_ms), options.settle_s)
    finally:
        await cluster.stop()
    read = ReadBack(load.sent.at_ms, [], [], [], {}, {}, faults)
    try:
        await offsets.read(_sorter(settings, read))
    finally:
        await offsets.stop()
    await _read_database(settings, read)
    report = check(read)
    report |= {
        "seconds": options.seconds,
        "instances": options.instances,
        "relays": options.relays,
        "rate": options.rate,
        "sends": load.sent.sends,
        "duplicates_sent": load.sent.duplicates,
        "settled": settled,
        "faults_skipped": skipped,
    }
    report["passed"] = report["passed"] and settled
    return report


async def _inject(
    cluster: Cluster, options: ChaosOptions, started: float, progress: Progress
) -> tuple[list[dict[str, Any]], list[str]]:
    """Each fault at its time; one that could not be injected is reported as failed."""
    faults: list[dict[str, Any]] = []
    skipped: list[str] = []
    for at, kind in options.schedule():
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        if not available(kind):
            skipped.append(kind)
            continue
        at_ms = int(time.time() * 1000)
        begun = time.monotonic()
        progress(f"{at:6.1f}s  {kind}")
        try:
            what = await cluster.inject(kind)
        except Exception as error:
            faults.append(describe(kind, at_ms, "", time.monotonic() - begun))
            faults[-1]["failed"] = repr(error)
            progress(f"         {kind} failed: {error!r}")
            continue
        faults.append(describe(kind, at_ms, what, time.monotonic() - begun))
    return faults, skipped


def _sorter(settings: Settings, read: ReadBack) -> Callable[[Any], None]:
    """Where each record read back goes: results, events and state as they are; of the
    commands and the dead letters, their command ids."""
    by_topic = {
        settings.topic_results: read.results,
        settings.topic_events: read.events,
        settings.topic_state: read.state,
    }

    def on_record(record: Any) -> None:
        if record.topic in by_topic:
            by_topic[record.topic].append(_message(record))
            return
        with contextlib.suppress(ValueError, KeyError, TypeError):
            command_id = orjson.loads(record.value)["command_id"]
            if record.topic == settings.topic_commands:
                read.in_topic.add(command_id)
            else:
                headers = dict(record.headers)
                error = bytes(headers.get("dlq_error") or b"").decode(errors="replace")
                read.dead_lettered[command_id] = error[:300]

    return on_record


def _message(record: Any) -> Message:
    headers = {k: bytes(v or b"") for k, v in record.headers}
    return Message(record.key, record.value, headers, record.timestamp)


async def _connect(settings: Settings) -> asyncpg.Connection:
    """A fresh connection, retried for a while: PostgreSQL may have been restarted."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await asyncpg.connect(settings.database_url.get_secret_value())
        except (OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)


async def _settle(settings: Settings, commands: int, wait_s: float) -> bool:
    """Until every command is processed and every outbox row published (or `wait_s`)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            conn = await _connect(settings)
            try:
                processed = await conn.fetchval("SELECT count(*) FROM processed_commands")
                unpublished = await conn.fetchval(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL"
                )
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError):
            processed, unpublished = -1, -1
        if processed >= commands and unpublished == 0:
            # The last results and events are on their way to Kafka.
            await asyncio.sleep(3)
            return True
        await asyncio.sleep(1)
    return False


async def _read_database(settings: Settings, read: ReadBack) -> None:
    conn = await _connect(settings)
    try:
        for row in await conn.fetch("SELECT id, version, deleted_at FROM customer_groups"):
            read.groups[row["id"]] = StoredGroup(row["version"], row["deleted_at"] is not None)
        rows = await conn.fetch(
            "SELECT group_id, command_id, count(*) AS n FROM outbox GROUP BY group_id, command_id"
        )
        read.outbox_rows.update({(r["group_id"], r["command_id"]): r["n"] for r in rows})
    finally:
        await conn.close()
