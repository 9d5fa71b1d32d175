"""The one place that builds pools, brokers and background tasks, and wires them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from service.adapters.command_store import CommandStore
from service.adapters.db import Pool, create_pool, migrate
from service.adapters.kafka import (
    CommandPublisher,
    EventPublisher,
    create_broker,
    create_producer,
    ensure_topics,
)
from service.config import Settings
from service.entrypoints import consumer as consumer_entrypoint
from service.entrypoints.asyncapi import document_topics
from service.observability import Health, Metrics
from service.relay import OutboxRelay, Pruner

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
    subscriber: Any = None
    relay: OutboxRelay | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


async def _cancel(tasks: list[asyncio.Task[None]], timeout_s: float) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        _, running = await asyncio.wait(tasks, timeout=timeout_s)
        for task in running:
            log.error("task %s did not stop when cancelled", task.get_name())


async def _stop_kafka(broker: KafkaBroker, producer: AIOKafkaProducer, timeout_s: float) -> None:
    """With Kafka down the producer would wait forever for its unsent messages; they are safe
    to drop (unacknowledged outbox rows stay unpublished, commands stay uncommitted), so
    shutdown does not wait for them."""
    try:
        async with asyncio.timeout(timeout_s):
            await broker.stop()
        async with asyncio.timeout(timeout_s):
            await producer.stop()
    except TimeoutError:
        log.warning("Kafka did not close in time; unsent messages will be redelivered")


@contextlib.asynccontextmanager
async def lifespan(
    settings: Settings, roles: frozenset[Role] = ALL_ROLES
) -> AsyncIterator[Container]:
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
        if settings.topic_auto_create:
            await ensure_topics(settings)
        broker = create_broker(settings)
        producer = create_producer(settings)
        container = Container(settings, pool, broker, Metrics(), Health(), roles)
        consumer = consumer_entrypoint.CommandConsumer(
            CommandStore(command_pool),
            CommandPublisher(producer, settings),
            container.metrics,
            settings.command_max_bytes,
            lanes=settings.command_lanes,
        )
        pipeline = consumer_entrypoint.Pipeline(consumer, health=container.health)
        if Role.CONSUMER in roles:
            container.subscriber = consumer_entrypoint.subscribe(broker, settings, pipeline)
        document_topics(broker, settings)
        await producer.start()
        await broker.start()
        try:
            if Role.RELAY in roles and settings.relay_enabled:
                state_topic = settings.topic_state if settings.relay_publish_state else None
                publisher = EventPublisher(producer, settings, state_topic=state_topic)
                relay = OutboxRelay(
                    pool,
                    publisher,
                    settings,
                    container.metrics,
                    container.health,
                    woken_by_commits=Role.CONSUMER in roles,
                )
                consumer.on_committed.append(relay.wakeup)
                container.relay = relay
                container.tasks.append(asyncio.create_task(relay.run(), name="outbox-relay"))
                pruner = Pruner(pool, settings, container.metrics)
                container.tasks.append(asyncio.create_task(pruner.run(), name="pruner"))
            log.info("customer-groups ready (roles: %s)", ", ".join(sorted(roles)))
            yield container
        finally:
            if container.subscriber is not None:
                await container.subscriber.stop()
            await pipeline.drain(settings.shutdown_timeout_s)
            await _cancel(container.tasks, settings.shutdown_timeout_s)
            await _stop_kafka(broker, producer, settings.shutdown_timeout_s)
    finally:
        if command_pool is not None:
            async with asyncio.timeout(settings.shutdown_timeout_s):
                await command_pool.close()
        async with asyncio.timeout(settings.shutdown_timeout_s):
            await pool.close()
