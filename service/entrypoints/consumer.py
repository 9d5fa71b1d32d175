"""The command consumer: Kafka records in, results (and dead letters) out.

It only translates: records become commands, commands go to the handlers, results go
back to Kafka. Offsets are committed once a batch's results are acknowledged, so a crash at
any point before that means redelivery, which the processed-commands table makes harmless."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeAlias, TypeVar

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaMessage as RawKafkaMessage
from pydantic import TypeAdapter, ValidationError

from service.adapters.kafka import CommandPublisher, DeadLetter, Reply
from service.adapters.kafka_start import StartWithinRetention
from service.config import Settings
from service.domain import headers
from service.domain.commands import (
    RULE_ERROR,
    Command,
    valid_command_id,
    valid_organization_id,
)
from service.domain.errors import InvalidCommand
from service.domain.ports import AnyCommand, CommandStore
from service.domain.results import CommandResult
from service.handlers import Incoming, apply_commands
from service.observability import Health, Metrics, is_transient

log = logging.getLogger(__name__)

_COMMAND: TypeAdapter[AnyCommand] = TypeAdapter(Command)

# aiokafka's ConsumerRecord is generic only to type checkers.
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
Commit: TypeAlias = Callable[[dict[TopicPartition, int]], Awaitable[None]]
T = TypeVar("T")

# A result must stay small whatever the input: thousands of unknown fields, or one with a
# huge name, would otherwise make a 422 larger than Kafka accepts, and it could never be sent.
_PROBLEMS_SHOWN = 10
_PROBLEM_CHARS = 200


@dataclass(frozen=True, slots=True)
class Invalid:
    reason: str
    details: str
    malformed: bool
    command_id: str | None = None
    organization_id: str | None = None


def parse_command(value: bytes | None, max_bytes: int) -> AnyCommand | Invalid:
    """A command, or why not; `malformed` ones break the wire schema and are dead-lettered."""
    if not value:
        return Invalid("empty", "The message has no value", malformed=True)
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return Invalid("not_json", "The message is not valid JSON", malformed=True)
    if not isinstance(data, dict):
        return Invalid("not_object", "The message is not a JSON object", malformed=True)
    command_id, organization_id = data.get("command_id"), data.get("organization_id")
    ids: dict[str, Any] = {}
    if valid_command_id(command_id) and valid_organization_id(organization_id):
        ids = {"command_id": command_id, "organization_id": organization_id}
    if len(value) > max_bytes:
        return Invalid("too_large", f"The message is larger than {max_bytes} bytes", True, **ids)
    try:
        return _COMMAND.validate_python(data)
    except ValidationError as error:
        problems = error.errors(include_url=False, include_input=False)
        malformed = any(p["type"] != RULE_ERROR for p in problems)
        return Invalid(
            "invalid_schema" if malformed else "validation",
            "; ".join(_describe(p)[:_PROBLEM_CHARS] for p in problems[:_PROBLEMS_SHOWN]),
            malformed,
            **ids,
        )


def _describe(problem: Any) -> str:
    if problem["type"] == RULE_ERROR:
        return str(problem["msg"])
    where = ".".join(str(part) for part in problem["loc"] if not str(part).startswith("group."))
    return f"{where}: {problem['msg']}" if where else str(problem["msg"])


@dataclass(frozen=True, slots=True)
class WireHeaders:
    """The headers the service copies onto what it sends, each checked (domain.headers)."""

    reply_to: str | None = None
    correlation_id: bytes | None = None
    traceparent: str | None = None


_CHECKS: dict[str, Callable[[bytes, frozenset[str]], str | bytes | headers.Refused]] = {
    "reply_to": headers.reply_to,
    "correlation_id": lambda raw, _: headers.correlation_id(raw),
    "traceparent": lambda raw, _: headers.traceparent(raw),
}


def read_headers(
    record: Record, own_topics: frozenset[str], refused: Callable[[headers.Refused], None]
) -> WireHeaders:
    """The first value of each header the service copies; one that breaks its rule is left
    out (and reported), so it never changes the command's outcome."""
    kept: dict[str, Any] = {}
    for key, value in record.headers:
        check = _CHECKS.get(key)
        if check is None or key in kept or value is None:
            continue
        checked = check(bytes(value), own_topics)
        if isinstance(checked, headers.Refused):
            refused(checked)
            kept[key] = None
        else:
            kept[key] = checked
    return WireHeaders(**kept) if kept else _NO_HEADERS


_NO_HEADERS = WireHeaders()


@dataclass(slots=True)
class Outcome:
    """A batch applied in PostgreSQL, with what remains to be sent to Kafka."""

    started: float
    replies: list[Reply | None]
    dead: list[DeadLetter]


MISROUTED_LOG_EVERY_S = 60.0


class RateLimitedLog:
    """At most one warning per `every_s`, with how many were held back since the last."""

    def __init__(self, every_s: float) -> None:
        self._every_s = every_s
        self._next = 0.0
        self._held = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        held, self._held, self._next = self._held, 0, now + self._every_s
        log.warning(message + " (%d more since the last warning)", *args, held)


# Below this many commands per lane, a lane's own round trips cost more latency than
# running beside another lane saves.
LANE_MIN_COMMANDS = 100

Lane: TypeAlias = list[tuple[int, Incoming]]
Applied: TypeAlias = CommandResult | Exception


@dataclass(frozen=True, slots=True)
class Part:
    """Some of a batch's commands, applied in one transaction after the earlier batches'
    parts in the same lanes."""

    lanes: Sequence[int]
    entries: Lane


def split_lanes(incoming: Lane, lanes: int) -> list[Part]:
    """Share a batch's commands among up to `lanes` transactions.

    An organization always has the same lane, so its commands keep their order from batch
    to batch, and lanes take no lock another holds. A batch too small to share is one part
    that comes after every lane. crc32 rather than hash(), which is salted per process: lanes
    hold the same organizations in every run."""
    if lanes == 1 or len(incoming) < lanes * LANE_MIN_COMMANDS:
        return [Part(range(lanes), incoming)]
    split: dict[int, Lane] = {}
    for entry in incoming:
        lane = zlib.crc32(entry[1].command.organization_id.encode()) % lanes
        split.setdefault(lane, []).append(entry)
    return [Part((lane,), entries) for lane, entries in sorted(split.items())]


class LaneStopped(RuntimeError):
    """A part before this one in its lane did not finish: running this one would overtake it."""


class LaneOrder:
    """Runs each part after the parts scheduled before it in its lanes, and never beside
    them; parts in other lanes run at once. A lane whose last part did not finish takes no
    more: what comes after it would overtake it."""

    def __init__(self, lanes: int) -> None:
        self._last: list[asyncio.Task[Any] | None] = [None] * lanes

    def schedule(self, lanes: Sequence[int], work: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        earlier = {task for lane in lanes if (task := self._last[lane]) is not None}
        task = asyncio.create_task(self._after(earlier, work))
        for lane in lanes:
            self._last[lane] = task
        return task

    @staticmethod
    async def _after(earlier: set[asyncio.Task[Any]], work: Callable[[], Awaitable[T]]) -> T:
        if earlier:
            await asyncio.wait(earlier)
        if any(task.cancelled() or task.exception() is not None for task in earlier):
            raise LaneStopped("an earlier batch in this lane did not finish")
        return await work()


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
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._metrics = metrics
        self._max_bytes = max_bytes
        self._retry_max_s = retry_max_s
        self._lanes = lanes
        self._order = LaneOrder(lanes)
        self._own_topics = own_topics
        self._misrouted = RateLimitedLog(MISROUTED_LOG_EVERY_S)
        self.on_committed: list[asyncio.Event] = []

    async def handle_records(self, records: Sequence[Record]) -> None:
        """Apply a batch and send its results."""
        await (await self.apply_records(records))

    async def apply_records(self, records: Sequence[Record]) -> Awaitable[None]:
        """Apply a batch in order and return what sends its results."""
        try:
            outcome = await self._apply(records)
        except LaneStopped:
            raise
        except Exception as error:
            await self._isolate(records, error)
            return asyncio.sleep(0)
        return self._deliver(records, outcome)

    async def _retrying(self, operation: Callable[[], Awaitable[T]]) -> T:
        delay = 0.1
        while True:
            try:
                return await operation()
            except Exception as error:
                if not is_transient(error):
                    raise
                self._metrics.transient_errors.inc()
                log.warning("transient failure, retrying in %.1fs: %r", delay, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)

    async def _apply(self, records: Sequence[Record]) -> Outcome:
        outcome = Outcome(asyncio.get_running_loop().time(), [None] * len(records), [])
        incoming: list[tuple[int, Incoming]] = []
        wire = [read_headers(r, self._own_topics, self._metrics.count_refused) for r in records]
        for position, record in enumerate(records):
            parsed = parse_command(record.value, self._max_bytes)
            if not isinstance(parsed, Invalid):
                self._check_key(record, parsed.organization_id)
                incoming.append((position, Incoming(parsed, wire[position].traceparent)))
                continue
            if parsed.malformed:
                outcome.dead.append(DeadLetter(record, parsed.reason, parsed.details))
            if parsed.command_id and parsed.organization_id:
                result = CommandResult.rejected(
                    parsed.command_id, parsed.organization_id, InvalidCommand(parsed.details)
                )
                outcome.replies[position] = _reply(wire[position], result)
                self._metrics.count_command("invalid", result)
        if incoming:
            parts = split_lanes(incoming, self._lanes)
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
                        continue
                    outcome.replies[position] = _reply(wire[position], done)
                    self._metrics.count_command(item.command.type, done)
            # Dead letters go out in their records' order, whichever lane failed them.
            outcome.dead.sort(key=lambda d: (d.record.partition, d.record.offset))
        return outcome

    async def _apply_part(self, items: Sequence[Incoming]) -> list[Applied]:
        """Commit a part's commands: their results, in order, or for a command that fails
        for good, why. Transient failures are retried for as long as it takes. Any other is
        a bug that one command triggers: the part is retried one command at a time, so that
        command alone fails and the partition moves on."""
        try:
            results: list[Applied] = list(
                await self._retrying(lambda: apply_commands(self._store, items))
            )
        except Exception as error:
            if len(items) > 1:
                return [result for item in items for result in await self._apply_part([item])]
            log.error("dead-lettering a command that failed: %r", error, exc_info=error)
            return [error]
        for event in self.on_committed:
            event.set()
        return results

    async def _deliver(self, records: Sequence[Record], outcome: Outcome) -> None:
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
        )


def _reply(wire: WireHeaders, result: CommandResult) -> Reply:
    return Reply(result, wire.reply_to, wire.correlation_id)


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


async def _parse_batch(
    records: tuple[Record, ...],
    original: Callable[[tuple[Record, ...]], Awaitable[RawKafkaMessage]],
) -> RawKafkaMessage:
    """FastStream decodes every header as UTF-8 and fails the whole batch, again on each
    redelivery, when one is null or not UTF-8. It is shown only the first and last records
    (all it reads besides bodies and headers), without headers; the handler reads the
    untouched records, whose headers it decodes leniently."""
    ends = (records[0], records[-1])
    message = await original(tuple(dataclasses.replace(r, headers=[]) for r in ends))
    message.raw_message = records
    return message


async def _records(message: RawKafkaMessage) -> tuple[Record, ...]:
    """Skip FastStream's decoding: the handler reads the records themselves, bad ones
    included, and needs their offsets and headers too."""
    records: tuple[Record, ...] = message.raw_message
    return records


_FETCH_MIN_BYTES = 64 * 1024


def subscribe(broker: KafkaBroker, settings: Settings, pipeline: Pipeline) -> Any:
    """Register the batch subscriber; the pipeline commits its offsets."""

    start = StartWithinRetention(settings, lambda: subscriber.consumer)
    subscriber = broker.subscriber(
        settings.topic_commands,
        batch=True,
        group_id=settings.kafka_consumer_group,
        # For a committed offset out of range (its records deleted unread, or the topic
        # recreated); with none committed, `start` chooses where to begin.
        auto_offset_reset="earliest",
        listener=start,
        max_records=settings.command_batch_max,
        batch_timeout_ms=settings.command_batch_timeout_ms,
        # The broker holds a fetch until 64 KiB wait or this long has passed, so moderate
        # rates make fewer, fuller fetches and batches, which cost less CPU and no latency
        # (docs/benchmark.md).
        fetch_min_bytes=_FETCH_MIN_BYTES,
        fetch_max_wait_ms=settings.command_fetch_wait_ms,
        # At-least-once: the pipeline commits a batch's offsets only after its results
        # were acknowledged (the default ACK_FIRST would commit before processing).
        ack_policy=AckPolicy.MANUAL,
        parser=_parse_batch,
        decoder=_records,
        no_reply=True,
        title="customer-groups.commands",
        description=(
            "Commands from producers: group.create, group.update, group.delete. Keyed by "
            "organization_id. See the CreateGroup, UpdateGroup and DeleteGroup schemas."
        ),
    )

    # The records come as the body, typed Any so that nothing validates them: asking for
    # the message instead (a Context parameter) costs a trip to a worker thread per batch.
    @subscriber
    async def on_commands(records: Any) -> None:
        kafka_consumer = subscriber.consumer
        assert kafka_consumer is not None  # it is running: it handed over this batch
        await pipeline.feed(records, kafka_consumer.commit)

    return subscriber
