"""The one place that builds pools, brokers and background tasks, and wires them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from faststream.kafka import KafkaBroker

from service.adapters.kafka.clients import (
    client_options,
    create_broker,
    create_producer,
    create_relay_producer,
)
from service.adapters.kafka.events import EventPublisher
from service.adapters.kafka.reply_copies import ReplyCopies, create_copy_producer
from service.adapters.kafka.results import CommandPublisher
from service.adapters.kafka.topics import ensure_topics, wait_for_topics
from service.adapters.oidc import OidcVerifier
from service.adapters.postgres.command_store import CommandStore
from service.adapters.postgres.db import Pool, create_pool, migrate
from service.adapters.postgres.members import MemberPurger
from service.adapters.postgres.outbox_store import PostgresOutbox
from service.applier import CommandConsumer
from service.config import Settings
from service.entrypoints.consumer import subscribe
from service.observability import Health, Metrics
from service.pipeline import Pipeline
from service.pruner import Pruner
from service.relay import OutboxRelay
from service.tracing import Tracing

log = logging.getLogger(__name__)


class Role(StrEnum):
    CONSUMER = "consumer"
    RELAY = "relay"
    HTTP = "http"


ALL_ROLES = frozenset(Role)


@dataclass
class Container:
    settings: Settings
    pool: Pool
    broker: KafkaBroker
    metrics: Metrics
    health: Health
    roles: frozenset[Role]
    tracing: Tracing = field(default_factory=Tracing)
    verifier: OidcVerifier | None = None
    subscriber: Any = None
    relay: OutboxRelay | None = None
    copies: ReplyCopies | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


async def _cancel(tasks: list[asyncio.Task[None]], timeout_s: float) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        _, running = await asyncio.wait(tasks, timeout=timeout_s)
        for task in running:
            log.error("task %s did not stop when cancelled", task.get_name())


async def _stop_kafka(
    broker: KafkaBroker, closers: list[Callable[[], Awaitable[None]]], timeout_s: float
) -> None:
    """With Kafka down a producer would wait forever for its unsent messages; they are safe
    to drop (unacknowledged outbox rows stay unpublished, commands stay uncommitted), so
    shutdown does not wait for them."""
    for close in [broker.stop, *closers]:
        try:
            async with asyncio.timeout(timeout_s):
                await close()
        except TimeoutError:
            log.warning("Kafka did not close in time; unsent messages will be redelivered")


async def _prepare_topics(settings: Settings, roles: frozenset[Role]) -> None:
    if settings.topic_auto_create:
        await ensure_topics(settings)
    elif Role.CONSUMER in roles:
        # Created elsewhere, maybe a moment ago: see `wait_for_leaders`.
        await wait_for_topics(client_options(settings), [settings.topic_commands])


def _start_pruner(container: Container, pool: Pool) -> None:
    if container.settings.outbox_publisher == "external":
        log.info("OUTBOX_PUBLISHER=external: outbox relay off; outbox rows pruned by age")
    external = container.settings.outbox_publisher == "external"
    outbox = PostgresOutbox(pool, published_externally=external)
    pruner = Pruner(outbox, container.settings, container.metrics, MemberPurger(pool))
    container.tasks.append(asyncio.create_task(pruner.run(), name="pruner"))


@contextlib.asynccontextmanager
async def lifespan(
    settings: Settings,
    roles: frozenset[Role] = ALL_ROLES,
    on_fatal: Callable[[BaseException], None] = lambda _: None,
    tracing: Tracing | None = None,
) -> AsyncIterator[Container]:
    """`on_fatal`: called when a part cannot go on and the process should exit. `tracing`:
    its owner shuts it down (none: no spans)."""
    tracing = tracing or Tracing()
    pool = await create_pool(settings)
    command_pool: Pool | None = None
    try:
        await migrate(pool)
        # Each of the consumer's `command_lanes` lanes runs one transaction at a time, and
        # a batch's locks end with its transactions: a pool of its own saves the reset query
        # on every release.
        command_pool = await create_pool(
            settings, min_size=1, max_size=settings.command_lanes, stateless=True
        )
        await _prepare_topics(settings, roles)
        broker = create_broker(settings)
        producer = create_producer(settings)
        container = Container(
            settings,
            pool,
            broker,
            Metrics(tracing.lost_spans),
            Health(),
            roles,
            tracing,
            OidcVerifier(settings) if settings.oidc_enabled else None,
        )
        copies = ReplyCopies(
            create_copy_producer(client_options(settings), settings.kafka_client_id),
            container.metrics,
            anchor_topic=settings.topic_results,
        )
        container.copies = copies
        consumer = CommandConsumer(
            CommandStore(command_pool, tracing.tracer),
            CommandPublisher(producer, settings, copies, container.metrics),
            container.metrics,
            settings.command_max_bytes,
            lanes=settings.command_lanes,
            own_topics=frozenset(settings.topics),
            tracing=tracing,
            consumer_group=settings.kafka_consumer_group,
        )
        pipeline = Pipeline(consumer, health=container.health, on_stopped=on_fatal)
        if Role.CONSUMER in roles:
            container.subscriber = subscribe(broker, settings, pipeline)
        relay_producer = create_relay_producer(settings)
        closers = [copies.stop, producer.stop, relay_producer.stop]
        await producer.start()
        await copies.start()
        await broker.start()
        try:
            if Role.RELAY in roles and settings.relay_enabled:
                if settings.outbox_publisher == "relay":
                    await relay_producer.start()
                    state_topic = settings.topic_state if settings.relay_publish_state else None
                    publisher = EventPublisher(
                        relay_producer, settings, state_topic=state_topic, tracing=tracing
                    )
                    relay = OutboxRelay(
                        PostgresOutbox(pool),
                        publisher,
                        settings,
                        container.metrics,
                        container.health,
                        woken_by_commits=Role.CONSUMER in roles,
                    )
                    consumer.on_committed.append(relay.wakeup)
                    container.relay = relay
                    container.tasks.append(asyncio.create_task(relay.run(), name="outbox-relay"))
                _start_pruner(container, pool)
            log.info("customer-groups ready (roles: %s)", ", ".join(sorted(roles)))
            yield container
        finally:
            if container.subscriber is not None:
                await container.subscriber.stop()
            await pipeline.drain(settings.shutdown_timeout_s)
            await _cancel(container.tasks, settings.shutdown_timeout_s)
            await _stop_kafka(broker, closers, settings.shutdown_timeout_s)
    finally:
        if command_pool is not None:
            async with asyncio.timeout(settings.shutdown_timeout_s):
                await command_pool.close()
        async with asyncio.timeout(settings.shutdown_timeout_s):
            await pool.close()
