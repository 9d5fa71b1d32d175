"""How the command consumer starts: once its topic's partitions all have leaders, and, on a
partition with no committed offset, no further back than processed commands are remembered."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from service.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

TOPICS_READY_TIMEOUT_S = 60.0
_POLL_S = 0.1
_RETRY_MAX_S = 5.0


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


@dataclass(frozen=True, slots=True)
class Start:
    """Where a partition with no committed offset starts, and what lies before it."""

    offset: int
    first: int
    # Records before this one are older than the processed-command retention.
    within_retention: int

    @property
    def skipped(self) -> int:
        return self.offset - self.first

    @property
    def beyond_retention(self) -> int:
        """Records at or after `offset` that are older than the retention."""
        return max(0, self.within_retention - self.offset)


class StartWithinRetention(ConsumerRebalanceListener):  # type: ignore[misc]
    """On a partition with no committed offset, starts at the first command within the
    processed-command retention rather than at the partition's beginning.

    No committed offset means a new consumer group, or offsets the broker dropped after the
    group sat empty past its `offsets.retention.minutes`. Commands older than the retention
    may have been applied and their ids forgotten: consumed again, they would apply a second
    time. The chosen offsets are committed at once, so a later start resumes from them
    instead of choosing again by a later clock."""

    def __init__(
        self,
        settings: Settings,
        consumer: Callable[[], AIOKafkaConsumer | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._consumer = consumer
        self._group = settings.kafka_consumer_group
        self._retention_days = settings.processed_commands_retention_days
        self._from_beginning = settings.command_start_without_offset == "earliest"
        self._clock = clock

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:  # noqa: ARG002 - the interface's
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer()
        if consumer is None or not assigned:
            return
        # Right after the assignment the fetcher resets a partition with no committed
        # offset to its beginning and fetches from there; paused, it fetches nothing until
        # the start is chosen (a seek drops whatever it holds).
        consumer.pause(*assigned)
        cutoff_ms = int((self._clock() - self._retention_days * 86400) * 1000)
        starts = await _retrying(lambda: self._starts(consumer, sorted(assigned), cutoff_ms))
        for tp, start in starts.items():
            consumer.seek(tp, start.offset)
            self._log(tp, start, cutoff_ms)
        if starts:
            try:
                await consumer.commit({tp: start.offset for tp, start in starts.items()})
            except KafkaError as error:
                log.warning("start offsets not committed, chosen again next time: %r", error)
        consumer.resume(*assigned)

    async def _starts(
        self, consumer: AIOKafkaConsumer, tps: list[TopicPartition], cutoff_ms: int
    ) -> dict[TopicPartition, Start]:
        committed = await asyncio.gather(*(consumer.committed(tp) for tp in tps))
        fresh = [tp for tp, offset in zip(tps, committed, strict=True) if offset is None]
        if not fresh:
            return {}
        first = await consumer.beginning_offsets(fresh)
        end = await consumer.end_offsets(fresh)
        found = await consumer.offsets_for_times(dict.fromkeys(fresh, cutoff_ms))
        starts: dict[TopicPartition, Start] = {}
        for tp in fresh:
            within = end[tp] if found[tp] is None else max(found[tp].offset, first[tp])
            offset = first[tp] if self._from_beginning else within
            starts[tp] = Start(offset, first[tp], within)
        return starts

    def _log(self, tp: TopicPartition, start: Start, cutoff_ms: int) -> None:
        where = f"{tp.topic}[{tp.partition}]"
        cutoff = datetime.fromtimestamp(cutoff_ms / 1000, UTC).isoformat("T", "seconds")
        if self._from_beginning:
            log.warning(
                "%s has no committed offset for group %s: starting at its beginning, offset "
                "%d, as COMMAND_START_WITHOUT_OFFSET=earliest says; %d command(s) older than "
                "%s, beyond the processed-command retention, apply again if applied before",
                where,
                self._group,
                start.offset,
                start.beyond_retention,
                cutoff,
            )
        elif start.skipped:
            log.warning(
                "%s has no committed offset for group %s: starting at offset %d, skipping %d "
                "command(s) older than %s: processed commands are remembered %g days "
                "(PROCESSED_COMMANDS_RETENTION_DAYS), so these may have been applied and "
                "forgotten, and would apply a second time",
                where,
                self._group,
                start.offset,
                start.skipped,
                cutoff,
                self._retention_days,
            )
        else:
            log.info(
                "%s has no committed offset for group %s: starting at offset %d, its "
                "beginning (no command in it is older than %s)",
                where,
                self._group,
                start.offset,
                cutoff,
            )


async def _retrying(attempt: Callable[[], Awaitable[T]]) -> T:
    """Until Kafka answers: resuming the partitions before their start is known would let
    the fetcher read them from their beginning."""
    delay = _POLL_S
    while True:
        try:
            return await attempt()
        except KafkaError as error:
            log.warning("choosing start offsets failed, retrying in %.1fs: %r", delay, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)
