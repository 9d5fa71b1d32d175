"""Helpers for the outbox relay tests: relays in this event loop, the command path, and
checks of what reached the events topic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import asyncpg

from service.adapters.kafka import Record
from service.adapters.kafka.clients import create_relay_producer
from service.adapters.kafka.events import EventPublisher
from service.adapters.postgres.command_store import CommandStore
from service.adapters.postgres.db import create_pool
from service.adapters.postgres.outbox_store import PostgresOutbox
from service.config import Settings
from service.domain.commands import CreateGroup, DeleteGroup, UpdateGroup
from service.domain.results import CommandResult
from service.handlers import Incoming, apply_commands
from service.observability import Health, Metrics
from service.relay import OutboxRelay
from tests.support import headers_of


@dataclass
class RunningRelay:
    relay: OutboxRelay
    task: asyncio.Task[None]
    health: Health
    metrics: Metrics


@contextlib.asynccontextmanager
async def running_relay(settings: Settings) -> AsyncIterator[RunningRelay]:
    """An OutboxRelay with a pool and a Kafka producer of its own, as one instance would run it."""
    pool = await create_pool(settings, min_size=1)
    producer = create_relay_producer(settings)
    await producer.start()
    health, metrics = Health(), Metrics()
    publisher = EventPublisher(producer, settings, state_topic=settings.topic_state)
    relay = OutboxRelay(PostgresOutbox(pool), publisher, settings, metrics, health)
    task = asyncio.create_task(relay.run())
    try:
        yield RunningRelay(relay, task, health, metrics)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await producer.stop()
        await pool.close()


def create(organization_id: str, name: str | None = None) -> CreateGroup:
    return CreateGroup(
        command_id=str(uuid.uuid4()),
        type="group.create",
        organization_id=organization_id,
        name=name or f"Group {uuid.uuid4().hex[:8]}",
    )


def rename(organization_id: str, group_id: str, name: str | None = None) -> UpdateGroup:
    return UpdateGroup(
        command_id=str(uuid.uuid4()),
        type="group.update",
        organization_id=organization_id,
        group_id=group_id,
        name=name or f"Renamed {uuid.uuid4().hex[:8]}",
    )


def delete(organization_id: str, group_id: str) -> DeleteGroup:
    return DeleteGroup(
        command_id=str(uuid.uuid4()),
        type="group.delete",
        organization_id=organization_id,
        group_id=group_id,
    )


async def apply(
    pool: asyncpg.Pool, *commands: CreateGroup | UpdateGroup | DeleteGroup
) -> list[CommandResult]:
    """The consumer's write path: one transaction for the batch, outbox rows included."""
    results = await apply_commands(CommandStore(pool), [Incoming(c) for c in commands])
    assert all(r.status == "accepted" for r in results), results
    return results


def group_id(result: CommandResult) -> str:
    assert result.group is not None
    return str(result.group["id"])


async def outbox_event_ids(pool: asyncpg.Pool) -> set[str]:
    return {str(r["event_id"]) for r in await pool.fetch("SELECT event_id FROM outbox")}


async def wait_until(condition: Callable[[], object], seconds: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


async def wait_published(pool: asyncpg.Pool, seconds: float = 30) -> None:
    """Until every outbox row is marked published."""
    deadline = asyncio.get_running_loop().time() + seconds
    while await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("outbox rows still unpublished")
        await asyncio.sleep(0.05)


def ce_id(record: Record) -> str:
    return headers_of(record)["ce_id"]


def _content(record: Record) -> tuple[bytes | None, bytes | None, dict[str, str]]:
    # FastStream gives every publish its own correlation_id; the event is the rest.
    headers = headers_of(record)
    headers.pop("correlation_id", None)
    return record.key, record.value, headers


def first_copies(records: Iterable[Record]) -> list[Record]:
    """Each event once, as a consumer deduplicating on ce_id keeps it, in arrival order.

    Asserts that every re-publish is the same event: same key, value and headers."""
    first: dict[str, Record] = {}
    for record in records:
        seen = first.setdefault(ce_id(record), record)
        assert _content(record) == _content(seen), f"ce_id {ce_id(record)} reused for another event"
    return list(first.values())


def versions_by_group(records: Iterable[Record]) -> dict[str, list[int]]:
    """Each group's ce_groupversion values, in the order its partition holds them."""
    versions: dict[str, list[int]] = defaultdict(list)
    for record in records:
        assert record.key is not None
        versions[record.key.decode()].append(int(headers_of(record)["ce_groupversion"]))
    return dict(versions)


def assert_each_group_in_order(records: Iterable[Record]) -> dict[str, list[int]]:
    """After dedupe on ce_id, every group's versions run 1, 2, 3... with no gap or reversal."""
    versions = versions_by_group(first_copies(records))
    for group_id, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), f"{group_id}: versions {seen}"
    return versions


def group_of(record: Record) -> dict[str, object]:
    value: dict[str, object] = json.loads(record.value or b"null")
    return value


class Downstream:
    """A consumer of the events topic that applies each change once, skipping ce_ids it has seen.

    Applying checks the contract's promise to such a consumer: each group's next change is
    the version after the one it holds."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.versions: dict[str, int] = {}
        self.applied: list[tuple[str, int]] = []

    def consume(self, records: Iterable[Record]) -> None:
        for record in records:
            event_id = ce_id(record)
            if event_id in self.seen:
                continue
            self.seen.add(event_id)
            group = json.loads(record.value or b"")
            group_id, version = group["id"], group["version"]
            assert version == self.versions.get(group_id, 0) + 1, (group_id, version)
            self.versions[group_id] = version
            self.applied.append((group_id, version))
