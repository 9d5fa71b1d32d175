"""Where the command consumer starts on a partition with no committed offset."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import (
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.errors import KafkaError

from service.config import Settings
from service.retry import retrying

log = logging.getLogger(__name__)


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
        # Until Kafka answers: resuming the partitions before their start is known would let
        # the fetcher read them from their beginning.
        starts = await retrying(
            lambda: self._starts(consumer, sorted(assigned), cutoff_ms),
            what="choosing start offsets",
            worth_it=lambda error: isinstance(error, KafkaError),
        )
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
