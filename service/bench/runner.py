"""A whole bench run: its own database and topics, each phase in turn against the real
service, and the figures about the run as a whole."""

from __future__ import annotations

import uuid

from service.adapters.kafka.topics import ensure_topics
from service.adapters.postgres.db import create_pool, migrate
from service.bench import (
    baselines,
    client,
    kafka_io,
    members,
    peer,
    relay,
    service_phases,
    traced,
    workload,
)
from service.bench.context import BenchRun, Progress
from service.bench.database import BenchDatabase
from service.bench.options import BenchOptions, Report
from service.bench.report import loadavg, machine, ratios, sizes
from service.bench.scratch import bench_settings, scratch_database, scratch_topics
from service.config import Settings


async def run_bench(
    options: BenchOptions, settings: Settings, progress: Progress = lambda _: None
) -> Report:
    """Every figure of the benchmark, measured in this one run.

    `settings` gives the servers; the bench makes its own database and topics on them and
    drops them at the end (unless `keep`). With `external`, the service is the one already
    running with `settings`' topics; only new organizations are written there, and the
    phases that write to the bench's own database (relay, members) are left out."""
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench-{run_id}"
    report = Report()
    report.figures["machine"] = machine()
    report.figures["sizes"] = sizes(options)
    admin_url = settings.database_url.get_secret_value()
    database_name = f"customer_groups_bench_{run_id}"
    async with scratch_database(admin_url, database_name, options.keep) as url:
        own = bench_settings(settings, prefix, url)
        target = settings if options.external else own
        if options.keep:
            report.figures["kept"] = {"database": database_name, "topic_prefix": prefix}
        pool = await create_pool(own, min_size=1)
        async with scratch_topics(own, options.keep, progress) as topics:
            try:
                await migrate(pool)
                if not options.external:
                    await ensure_topics(own)
                    topics.extend(own.topics)
                orgs = workload.organizations(prefix, options.organizations)
                run = BenchRun(options, prefix, BenchDatabase(pool, orgs), report, progress)
                if "baselines" not in options.skip:
                    roundtrip = f"{prefix}.roundtrip"
                    await kafka_io.create_topic(own, roundtrip, own.topic_partitions_commands)
                    topics.append(roundtrip)
                    await baselines.measure(run, own, roundtrip)
                await service_phases.measure(run, target)
                if "relay" not in options.skip and not options.external:
                    await relay.measure(run, own)
                if "members" not in options.skip and not options.external:
                    await members.measure(run, own)
                if "tracing" not in options.skip and not options.external:
                    await traced.measure(run, own)
                if "client" not in options.skip and not options.external:
                    await client.measure(run, own)
                if options.peer and not options.external:
                    await peer.measure(run, own)
            finally:
                await pool.close()
    report.figures["machine"]["loadavg_at_end"] = loadavg()
    report.figures["ratios"] = ratios(report.figures)
    return report
