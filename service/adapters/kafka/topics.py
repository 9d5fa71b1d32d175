"""The service's topics: created when missing, and waited for until every partition has a leader."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from service.adapters.kafka.clients import client_options
from service.config import Settings

log = logging.getLogger(__name__)


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the service's topics if missing; the broker's auto-creation is never relied on."""
    rf = settings.topic_replication_factor
    wanted = [
        NewTopic(settings.topic_commands, settings.topic_partitions_commands, rf),
        NewTopic(settings.topic_results, settings.topic_partitions_results, rf),
        NewTopic(settings.topic_events, settings.topic_partitions_events, rf),
        NewTopic(settings.topic_dlq, settings.topic_partitions_commands, rf),
        NewTopic(
            settings.topic_state,
            settings.topic_partitions_events,
            rf,
            topic_configs={"cleanup.policy": "compact"},
        ),
    ]
    admin = AIOKafkaAdminClient(**client_options(settings), client_id=settings.kafka_client_id)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            # Another instance starting at the same time may have created them first.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
            log.info("created topics %s", ", ".join(t.name for t in missing))
        # Created just now, here or by another instance: a consumer joining its group
        # before their partitions have leaders could be assigned none of them.
        await wait_for_leaders(admin, [t.name for t in wanted])
        return [t.name for t in missing]
    finally:
        await admin.close()


TOPICS_READY_TIMEOUT_S = 60.0


_POLL_S = 0.1


class TopicsNotReady(RuntimeError):
    """Partitions of the service's topics still had no leader when the start gave up."""


def not_ready(described: list[dict[str, Any]]) -> dict[str, str]:
    """Why each topic of a metadata answer (`describe_topics`) cannot be consumed yet."""
    reasons: dict[str, str] = {}
    for topic in described:
        name = topic["topic"]
        if topic["error_code"]:
            reasons[name] = f"error code {topic['error_code']}"
        elif not topic["partitions"]:
            reasons[name] = "no partitions"
        elif leaderless := sorted(p["partition"] for p in topic["partitions"] if p["leader"] < 0):
            reasons[name] = f"no leader for partition(s) {', '.join(map(str, leaderless))}"
    return reasons


async def wait_for_leaders(
    admin: AIOKafkaAdminClient,
    topics: Collection[str],
    timeout_s: float = TOPICS_READY_TIMEOUT_S,
) -> None:
    """Until the cluster's metadata shows every partition of `topics` with a leader.

    A consumer group's leader assigns only the partitions its metadata knows. One that joins
    right after its topic was created can get none, and aiokafka looks again only at its
    next metadata refresh (`metadata_max_age_ms`, 5 minutes), while commands wait."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    waiting = False
    while True:
        try:
            reasons = not_ready(await admin.describe_topics(sorted(topics)))
        except KafkaError as error:
            reasons = {name: repr(error) for name in topics}
        if not reasons:
            if waiting:
                log.info("topics ready: %s", ", ".join(sorted(topics)))
            return
        if loop.time() >= deadline:
            raise TopicsNotReady(
                f"topics not ready after {timeout_s:g}s: "
                + "; ".join(f"{name}: {why}" for name, why in sorted(reasons.items()))
                + ". Check that the brokers are up and the topics exist."
            )
        if not waiting:
            log.info(
                "waiting up to %gs for the leaders of %s", timeout_s, ", ".join(sorted(reasons))
            )
            waiting = True
        await asyncio.sleep(_POLL_S)


async def wait_for_topics(
    options: Mapping[str, Any],
    topics: Collection[str],
    timeout_s: float = TOPICS_READY_TIMEOUT_S,
) -> None:
    """`wait_for_leaders` with an admin client of its own, built from `options`."""
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        await wait_for_leaders(admin, topics, timeout_s)
    finally:
        await admin.close()
