"""The command pipeline: batches of records applied in lanes, their results and dead letters
sent, their offsets committed in order once Kafka has the results.

A crash at any point before a commit means redelivery, which the processed-commands table
makes harmless."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeAlias

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from service.adapters.kafka import Record
from service.applier import CommandConsumer
from service.observability import Health

log = logging.getLogger(__name__)


Commit: TypeAlias = Callable[[dict[TopicPartition, int]], Awaitable[None]]


class Pipeline:
    """Keeps up to `depth` batches in flight: a batch's lanes start as soon as the same lanes
    of the batch before are done, and its Kafka acknowledgements and offset commit overlap
    the batches after it. Offsets are still committed only once a batch's results are
    acknowledged, and in batch order."""

    def __init__(
        self,
        consumer: CommandConsumer,
        depth: int = 2,
        health: Health | None = None,
        on_stopped: Callable[[BaseException], None] = lambda _: None,
    ) -> None:
        self._consumer = consumer
        self._depth = depth
        self.health = health or Health()
        self._on_stopped = on_stopped
        self._pending: deque[asyncio.Task[None]] = deque()
        self._failure: BaseException | None = None

    async def feed(self, records: Sequence[Record], commit: Commit) -> None:
        while len(self._pending) >= self._depth:
            await asyncio.wait({self._pending[0]})
        if self._failure is not None:
            # Nothing fetched after a failed batch may be committed, or that batch is lost.
            raise RuntimeError("the command pipeline stopped; restart the service") from (
                self._failure
            )
        applied = asyncio.create_task(self._consumer.apply_records(records))
        offsets: dict[TopicPartition, int] = {}
        for record in records:
            partition = TopicPartition(record.topic, record.partition)
            offsets[partition] = max(offsets.get(partition, 0), record.offset + 1)
        previous = self._pending[-1] if self._pending else None
        task = asyncio.create_task(self._finish(applied, previous, commit, offsets))
        self._pending.append(task)
        task.add_done_callback(self._pending.remove)

    async def _finish(
        self,
        applied: asyncio.Task[Awaitable[None]],
        previous: asyncio.Task[None] | None,
        commit: Commit,
        offsets: dict[TopicPartition, int],
    ) -> None:
        try:
            await (await applied)
        except Exception as error:
            log.critical("a batch's results were not sent; the service stops", exc_info=error)
            if self._failure is None:
                self._failure = error
                self.health.degraded("pipeline", f"stopped: {error!r}")
                # Its partitions must go to an instance that can go on: the process exits
                # (non-zero), and what was not committed is redelivered.
                self._on_stopped(error)
        if previous is not None:
            await previous
        if self._failure is not None:
            # Committing these offsets, or any later ones, would skip a batch whose results
            # were never sent; they stay uncommitted, and a restart redelivers them.
            return
        try:
            await commit(offsets)
        except KafkaError as error:
            # The partition moved to another consumer (or Kafka is away); whoever reads it
            # next gets these records again, and their stored results are sent again.
            log.warning("offsets not committed, the records will be redelivered: %r", error)

    async def drain(self, wait_s: float) -> None:
        """Let the batches in flight finish for up to `wait_s`, then stop the rest: a commit
        whose consumer has stopped never returns. What they did not commit comes again, and
        its stored results are sent again."""
        if not self._pending:
            return
        _, late = await asyncio.wait(list(self._pending), timeout=wait_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
