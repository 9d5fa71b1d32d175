"""The client phase: the Python client's `send_many` through a running service next to raw
commands sent to the same service, and its feed applying events in memory."""

from __future__ import annotations

import asyncio
import itertools
import time

import orjson
from customer_groups_client import CreateGroup, Feed, GroupsClient, GroupView, Topics

from service.adapters.kafka.batches import JSON_CONTENT, send_batches
from service.bench import kafka_io
from service.bench.context import BenchRun
from service.bench.process import ServiceProcess
from service.bench.timing import arrivals
from service.config import Settings

FEED_VERSIONS = 10


async def measure(run: BenchRun, own: Settings) -> None:
    await run.database.reset()
    count = run.options.client_commands
    service = ServiceProcess(own, roles=("consumer", "relay"))
    await service.start()
    run.progress(f"client: {count:,} commands raw, then {count:,} through send_many")
    reply_topic = f"{run.prefix}.replies"
    try:
        raw_per_s = await _raw(run, own, count)
        async with GroupsClient(
            own.kafka_bootstrap_servers, reply_topic=reply_topic, topics=client_topics(own)
        ) as client:
            commands = [
                CreateGroup(organization_id=org, name=f"client {n}")
                for n, org in zip(range(count), itertools.cycle(run.orgs), strict=False)
            ]
            started = time.perf_counter()
            results = await client.send_many(commands)
            client_per_s = count / (time.perf_counter() - started)
    except BaseException:
        run.progress(f"the service's log ends with:\n{service.log_tail()}")
        raise
    finally:
        await service.stop(keep_log=run.options.keep)
        await kafka_io.delete_topics(own, [reply_topic])
    if rejected := sum(not r.accepted for r in results):
        run.problem(f"client: {rejected} of {count} commands were rejected")
    run.figures["client_raw_commands_per_s"] = round(raw_per_s)
    run.figures["client_send_many_commands_per_s"] = round(client_per_s)
    run.figures["client_send_many_ratio"] = round(client_per_s / raw_per_s, 3)
    await _feed(run, own)


async def _raw(run: BenchRun, own: Settings, count: int) -> float:
    """Prebuilt commands in record batches, timed until the last result is on the topic."""
    offsets = kafka_io.Offsets(own, [own.topic_results])
    await offsets.start()
    producer = kafka_io.producer(own)
    await producer.start()
    try:
        records = [
            (org.encode(), CreateGroup(organization_id=org, name=f"raw {n}").body())
            for n, org in zip(range(count), itertools.cycle(run.orgs), strict=False)
        ]
        started = time.perf_counter()
        await kafka_io.produce(producer, own.topic_commands, records)
        arrived = await arrivals(offsets.gained, {own.topic_results: count}, 30)
    finally:
        await producer.stop()
        await offsets.stop()
    if own.topic_results not in arrived:
        run.problem("client: the raw commands' results did not all come")
        return float("nan")
    return count / (arrived[own.topic_results] - started)


async def _feed(run: BenchRun, own: Settings) -> None:
    """`feed_groups` groups created, then changed FEED_VERSIONS - 1 times, on events and state
    topics of their own before the feed starts; timed from its start until the view holds
    every last version."""
    groups = run.options.feed_groups
    total = groups * FEED_VERSIONS
    run.progress(f"client feed: {total:,} events to apply in memory")
    topics = Topics.with_prefix(f"{run.prefix}.feed")
    for topic in (topics.events, topics.state):
        await kafka_io.create_topic(own, topic, own.topic_partitions_events)
    try:
        await _fill(own, topics.events, groups)
        view = GroupView()
        applied = 0
        cpu_before = time.process_time()
        started = time.perf_counter()
        async with Feed(
            own.kafka_bootstrap_servers, group_id=f"{run.prefix}-feed", topics=topics
        ) as feed:
            async for change in feed:
                view.apply(change)
                applied += 1
                if applied == total:
                    break
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
    finally:
        await kafka_io.delete_topics(own, [topics.events, topics.state])
    if any(group.version != FEED_VERSIONS for group in view.groups.values()):
        run.problem("client feed: the view does not hold every group's last version")
    run.figures["client_feed_events_per_s"] = round(total / elapsed)
    run.figures["client_feed_cpu_us_per_event"] = round(cpu / total * 1e6, 2)


async def _fill(own: Settings, topic: str, groups: int) -> None:
    producer = kafka_io.producer(own)
    await producer.start()
    try:
        for version in range(1, FEED_VERSIONS + 1):
            events = [_event(n, version) for n in range(groups)]
            await asyncio.gather(*await send_batches(producer, topic, events))
    finally:
        await producer.stop()


def _event(n: int, version: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    group_id = f"grp_feed_{n}"
    value = {
        "id": group_id,
        "organization_id": "org_feed",
        "name": f"Group {n} v{version}",
        "description": None,
        "platform_id": None,
        "customer_count": 0,
        "version": version,
        "created_at": "2026-12-01T10:00:00.000000Z",
        "updated_at": "2026-12-01T10:00:00.000000Z",
        "deleted_at": None,
    }
    kind = b"group.created" if version == 1 else b"group.updated"
    headers = [
        ("ce_id", f"{group_id}-{version}".encode()),
        ("ce_type", kind),
        JSON_CONTENT,
        ("ce_groupversion", str(version).encode()),
    ]
    return group_id.encode(), orjson.dumps(value), headers


def client_topics(own: Settings) -> Topics:
    """The client's names for the topics of these settings."""
    return Topics(
        commands=own.topic_commands,
        results=own.topic_results,
        events=own.topic_events,
        state=own.topic_state,
    )
