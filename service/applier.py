"""Applying a batch of command records: parsed, shared among lanes, committed in PostgreSQL,
their results and dead letters sent; a failure narrowed down to the one record causing it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeAlias, TypeVar

from service.adapters.kafka import Record
from service.adapters.kafka.results import CommandPublisher, DeadLetter, Reply
from service.domain.errors import InvalidCommand
from service.domain.ports import CommandStore
from service.domain.results import CommandResult
from service.handlers import Incoming, apply_commands
from service.lanes import LaneOrder, LaneStopped, by_weight, split_lanes
from service.observability import Metrics, RateLimitedLog, command_ids
from service.parsing import Invalid, WireHeaders, parse_command, read_headers
from service.retry import retrying
from service.spans import UntracedCommands, command_spans
from service.tracing import Tracing

log = logging.getLogger(__name__)


T = TypeVar("T")


@dataclass(slots=True)
class Outcome:
    """A batch applied in PostgreSQL, with what remains to be sent to Kafka."""

    started: float
    replies: list[Reply | None]
    dead: list[DeadLetter]
    spans: UntracedCommands


MISROUTED_LOG_EVERY_S = 60.0


# Membership commands carry up to 1,000 customer ids each; a transaction takes commands
# up to this many ids (or commands) so that its reads and writes stay short.
TRANSACTION_ROWS_MAX = 20_000


Applied: TypeAlias = CommandResult | Exception


class CommandConsumer:
    def __init__(
        self,
        store: CommandStore,
        publisher: CommandPublisher,
        metrics: Metrics,
        max_bytes: int,
        *,
        retry_max_s: float = 5.0,
        lanes: int = 1,
        own_topics: frozenset[str] = frozenset(),
        tracing: Tracing | None = None,
        consumer_group: str = "",
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._metrics = metrics
        self._max_bytes = max_bytes
        self._retry_max_s = retry_max_s
        self._lanes = lanes
        self._order = LaneOrder(lanes)
        self._own_topics = own_topics
        self._misrouted = RateLimitedLog(log, MISROUTED_LOG_EVERY_S)
        self._tracing = tracing or Tracing()
        self._consumer_group = consumer_group
        self.on_committed: list[asyncio.Event] = []

    async def handle_records(self, records: Sequence[Record]) -> None:
        """Apply a batch and send its results."""
        await (await self.apply_records(records))

    async def apply_records(self, records: Sequence[Record]) -> Awaitable[None]:
        """Apply a batch in order and return what sends its results."""
        topic = records[0].topic if records else ""
        spans = command_spans(self._tracing, topic, self._consumer_group)
        try:
            outcome = await self._apply(records, spans)
        except BaseException as error:
            spans.end()
            if isinstance(error, LaneStopped) or not isinstance(error, Exception):
                raise
            await self._isolate(records, error)
            return asyncio.sleep(0)
        return self._deliver(records, outcome)

    async def _retrying(self, operation: Callable[[], Awaitable[T]]) -> T:
        return await retrying(
            operation,
            what="a command batch",
            on_retry=lambda _: self._metrics.transient_errors.inc(),
            max_s=self._retry_max_s,
        )

    async def _apply(self, records: Sequence[Record], spans: UntracedCommands) -> Outcome:
        outcome = Outcome(asyncio.get_running_loop().time(), [None] * len(records), [], spans)
        incoming: list[tuple[int, Incoming]] = []
        wire = [read_headers(r, self._own_topics, self._metrics.count_refused) for r in records]
        for position, record in enumerate(records):
            parsed = parse_command(record.value, self._max_bytes)
            # What the command's result and events carry: its span's, or the producer's.
            traceparent = spans.start(position, record, wire[position].traceparent, parsed)
            if not isinstance(parsed, Invalid):
                self._check_key(record, parsed.organization_id)
                incoming.append((position, Incoming(parsed, traceparent)))
                continue
            if parsed.malformed:
                outcome.dead.append(DeadLetter(record, parsed.reason, parsed.details))
                spans.fail(position, parsed.reason)
            if parsed.command_id and parsed.organization_id:
                result = CommandResult.rejected(
                    parsed.command_id, parsed.organization_id, InvalidCommand(parsed.details)
                )
                outcome.replies[position] = _reply(wire[position], result, traceparent)
                self._metrics.count_command("invalid", result)
        if incoming:
            parts = split_lanes(incoming, self._lanes)
            with spans.batch(len(records)):
                applied = await asyncio.gather(
                    *(
                        self._order.schedule(
                            p.lanes, partial(self._apply_part, [i for _, i in p.entries])
                        )
                        for p in parts
                    )
                )
            for part, results in zip(parts, applied, strict=True):
                for (position, item), done in zip(part.entries, results, strict=True):
                    if isinstance(done, Exception):
                        letter = DeadLetter(records[position], "processing_failed", repr(done))
                        outcome.dead.append(letter)
                        spans.fail(position, "processing_failed")
                        continue
                    outcome.replies[position] = _reply(wire[position], done, item.traceparent)
                    self._metrics.count_command(item.command.type, done)
            # Dead letters go out in their records' order, whichever lane failed them.
            outcome.dead.sort(key=lambda d: (d.record.partition, d.record.offset))
        return outcome

    async def _apply_part(self, items: Sequence[Incoming]) -> list[Applied]:
        """Commit a part's commands: their results, in order, or for a command that fails
        for good, why. Transient failures are retried for as long as it takes. Any other is
        a bug that one command triggers: the part is retried one command at a time, so that
        command alone fails and the partition moves on."""
        runs = by_weight(items, TRANSACTION_ROWS_MAX)
        if len(runs) > 1:
            return [result for run in runs for result in await self._apply_part(run)]
        try:
            results: list[Applied] = list(
                await self._retrying(lambda: apply_commands(self._store, items))
            )
        except Exception as error:
            if len(items) > 1:
                return [result for item in items for result in await self._apply_part([item])]
            command = items[0].command
            log.error(
                "dead-lettering a command that failed: %r",
                error,
                exc_info=error,
                extra=command_ids(command.organization_id, command.command_id, command.group_id),
            )
            return [error]
        for event in self.on_committed:
            event.set()
        return results

    async def _deliver(self, records: Sequence[Record], outcome: Outcome) -> None:
        try:
            await self._send(records, outcome)
        finally:
            outcome.spans.end()

    async def _send(self, records: Sequence[Record], outcome: Outcome) -> None:
        replies = [reply for reply in outcome.replies if reply is not None]
        try:
            await self._retrying(lambda: self._publisher.send(replies, outcome.dead))
        except Exception as error:
            if len(records) > 1:
                await self._isolate(records, error)
                return
            await self._send_stand_ins(replies, outcome.dead, error)
        self._metrics.dead_letters.inc(len(outcome.dead))
        self._metrics.batch_seconds.observe(asyncio.get_running_loop().time() - outcome.started)

    async def _send_stand_ins(
        self, replies: Sequence[Reply], dead: Sequence[DeadLetter], error: Exception
    ) -> None:
        """Kafka refused one record's result or dead letter for good: small stand-ins go
        instead (the outcome without its group, no copied headers; a dead letter without the
        command's bytes), and if even those are refused the line goes on without them."""
        why = f"Kafka refused it: {type(error).__name__}"
        stand_ins = [Reply(r.result.not_sendable(why)) for r in replies]
        bare = [dataclasses.replace(d, bare=True) for d in dead]
        try:
            await self._retrying(lambda: self._publisher.send(stand_ins, bare))
        except Exception as refused:
            log.error("a result was not sendable, nor its stand-in: %r", refused)
            self._metrics.results_not_sendable.labels("stand_in").inc()
            return
        self._metrics.results_not_sendable.labels("result").inc(len(replies))
        self._metrics.dead_letters.inc(len(bare))

    async def _isolate(self, records: Sequence[Record], error: Exception) -> None:
        if len(records) > 1:
            for record in records:
                await self.handle_records([record])
            return
        log.error("dead-lettering a command that failed: %r", error, exc_info=error)
        letter = DeadLetter(records[0], "processing_failed", repr(error))
        try:
            await self._retrying(lambda: self._publisher.send([], [letter]))
        except Exception as refused:
            # Kafka refuses even the dead letter for good: the line goes on without it.
            log.error("dead letter not sendable, the command is skipped: %r", refused)
            self._metrics.results_not_sendable.labels("dead_letter").inc()
            return
        self._metrics.dead_letters.inc()

    def _check_key(self, record: Record, organization_id: str) -> None:
        """Applied all the same: the command is valid, only its order with the
        organization's other commands is not guaranteed, which the producer should hear of."""
        if record.key is not None and record.key == organization_id.encode():
            return
        self._metrics.misrouted_commands.inc()
        self._misrouted.warning(
            "commands keyed other than by their organization_id lose per-organization order;"
            " e.g. partition %d offset %d",
            record.partition,
            record.offset,
            extra=command_ids(organization_id),
        )


def _reply(wire: WireHeaders, result: CommandResult, traceparent: str | None) -> Reply:
    return Reply(result, wire.reply_to, wire.correlation_id, traceparent)
