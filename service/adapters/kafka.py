"""Kafka: the broker, topic creation, and publishing results, dead letters and events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from service.adapters.kafka_start import wait_for_leaders
from service.adapters.outbox_store import OutboxRow
from service.adapters.reply_copies import ReplyCopies
from service.config import Settings
from service.domain.headers import valid_traceparent
from service.domain.model import format_time
from service.domain.results import CommandResult
from service.observability import Metrics

log = logging.getLogger(__name__)


def _password(settings: Settings) -> str | None:
    secret = settings.kafka_sasl_password
    return secret.get_secret_value() if secret else None


def security(settings: Settings) -> BaseSecurity | None:
    context = settings.kafka_ssl_context()
    if not settings.kafka_security_protocol.startswith("SASL"):
        return BaseSecurity(ssl_context=context) if context else None
    username = settings.kafka_sasl_username or ""
    password = _password(settings) or ""
    sasl = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
    return sasl[settings.kafka_sasl_mechanism](
        username, password, ssl_context=context, use_ssl=context is not None
    )


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection options for plain aiokafka clients (admin, ops tools, tests)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
        "ssl_context": settings.kafka_ssl_context(),
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = _password(settings)
    return options


_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's Utils.murmur2), faster than aiokafka's: the
    key is read as little-endian words at once, and masking is done once per step."""
    length = len(data)
    h = 0x9747B28C ^ length
    words = length >> 2
    for word in struct.unpack_from(f"<{words}I", data):
        k = (word * _M) & _MASK
        h = ((h * _M) ^ ((k ^ (k >> 24)) * _M)) & _MASK
    rest = length & 3
    if rest:
        tail = words << 2
        if rest == 3:
            h ^= data[tail + 2] << 16
        if rest >= 2:
            h ^= data[tail + 1] << 8
        h = ((h ^ data[tail]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


class CachedPartitioner:
    """Kafka's default key partitioner (murmur2), remembered per key.

    Keys must land where any Kafka client would put them. Organization and group ids
    repeat, so each is hashed once (the cache is bounded, and emptied when full); a new
    group's first event still costs a hash."""

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._partitions: dict[tuple[bytes, int], int] = {}
        self._default = DefaultPartitioner()

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(self._default(key, all_partitions, available))
        cached = self._partitions.get((key, len(all_partitions)))
        if cached is None:
            if len(self._partitions) >= self._size:
                self._partitions.clear()
            cached = all_partitions[(murmur2(key) & 0x7FFFFFFF) % len(all_partitions)]
            self._partitions[key, len(all_partitions)] = cached
        return cached


PARTITIONER = CachedPartitioner()


def create_producer(settings: Settings) -> AIOKafkaProducer:
    """The producer of results, dead letters and events.

    Idempotence with acks=all keeps each partition's order through retries. A plain
    aiokafka producer rather than FastStream's publish: on the hot path FastStream's
    per-message wrapping (a correlation id, a command object) was a large part of the CPU."""
    return AIOKafkaProducer(
        **client_options(settings),
        client_id=settings.kafka_client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=1,
        max_batch_size=512 * 1024,
        partitioner=PARTITIONER,
    )


def create_relay_producer(settings: Settings) -> AIOKafkaProducer:
    """The relay's own producer of events and state records.

    Not idempotent, so that it gives up on a record once its request timeout has passed
    twice (an idempotent one never does): the relay's fencing rests on that bound. Order
    holds all the same, as aiokafka sends one request at a time per partition; a retry may
    write an event twice, with the same ce_id, which consumers accept anyway."""
    return AIOKafkaProducer(
        **client_options(settings),
        client_id=f"{settings.kafka_client_id}-relay",
        enable_idempotence=False,
        acks="all",
        linger_ms=1,
        max_batch_size=512 * 1024,
        request_timeout_ms=int(settings.relay_delivery_timeout_s * 1000 / 2),
        partitioner=PARTITIONER,
    )


Message: TypeAlias = tuple[bytes, bytes | None, list[tuple[str, bytes]]]


async def send_batches(
    producer: AIOKafkaProducer, topic: str, messages: Iterable[Message]
) -> list[asyncio.Future[Any]]:
    """Queue keyed messages as one record batch per partition, in order; the futures are
    done once Kafka has acknowledged them.

    Same result as `send` per message, without its per-message future and metadata
    lookup, a large part of the relay's CPU. A batch is closed when handed over: an
    open one waits out the producer's linger_ms although nothing more will join it."""
    partitions = sorted(await producer.partitions_for(topic))
    batches: dict[int, Any] = {}
    sent: list[asyncio.Future[Any]] = []
    for key, value, headers in messages:
        partition = PARTITIONER(key, partitions, partitions)
        record = {"key": key, "value": value, "timestamp": None, "headers": headers}
        batch = batches.get(partition)
        if batch is not None and batch.append(**record):
            continue
        if batch is not None:
            batch.close()
            sent.append(await producer.send_batch(batch, topic, partition=partition))
        batch = batches[partition] = producer.create_batch()
        if not batch.append(**record):
            # Larger than a whole batch: `send` sizes a batch to fit it.
            del batches[partition]
            sent.append(await producer.send(topic, value, key, partition, headers=headers))
    for partition, batch in batches.items():
        batch.close()
        sent.append(await producer.send_batch(batch, topic, partition=partition))
    return sent


def create_broker(settings: Settings) -> KafkaBroker:
    # Idempotence with acks=all keeps each partition's order through producer retries.
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        security=security(settings),
        client_id=settings.kafka_client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        max_batch_size=512 * 1024,
        logger=logging.getLogger("service.kafka"),
        log_level=logging.DEBUG,
    )


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


@dataclass(frozen=True, slots=True)
class Reply:
    result: CommandResult
    reply_to: str | None = None
    # Bytes: it goes back exactly as the producer sent it, UTF-8 or not.
    correlation_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: ConsumerRecord[bytes, bytes]
    reason: str
    error: str
    # Only the dlq_* headers, for a letter Kafka refused with the command's bytes.
    bare: bool = False


# A dead letter must fit the DLQ topic (the broker's default limit is about 1 MiB per batch)
# and the producer's max_request_size, yet a compressing producer can get a far larger
# command onto the commands topic: such a copy keeps only its first bytes, and its
# dlq_source_* headers still point at the original.
DEAD_LETTER_MAX_BYTES = 1_000_000
DLQ_PREFIX = "dlq_"
_DEAD_LETTER_KEY_MAX = 1024


class CommandPublisher:
    """Sends command results and dead letters, and waits until Kafka has them all.

    Copies to a producer's reply_to topic are best effort and never waited for: the
    results topic is the record."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        settings: Settings,
        copies: ReplyCopies | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._producer = producer
        self._not_sendable = (metrics or Metrics()).results_not_sendable.labels("result")
        self._settings = settings
        self._copies = copies
        # Producers may not aim replies into the service's own streams.
        self._own_topics = set(settings.topics)

    async def send(self, replies: Sequence[Reply], dead: Sequence[DeadLetter] = ()) -> None:
        pending = [await self._dead_letter(letter) for letter in dead]
        results: list[Message] = []
        for reply in replies:
            body = orjson.dumps(reply.result.to_json())
            if len(body) > RESULT_MAX_BYTES:
                body = orjson.dumps(reply.result.not_sendable("larger than Kafka takes").to_json())
                self._not_sendable.inc()
            results.append((reply.result.organization_id.encode(), body, _headers(reply)))
        pending += await send_batches(self._producer, self._settings.topic_results, results)
        if pending:
            await asyncio.gather(*pending)
        if self._copies is None:
            return
        for reply, (key, value, headers) in zip(replies, results, strict=True):
            if reply.reply_to and reply.reply_to not in self._own_topics and value is not None:
                self._copies.offer(reply.reply_to, key, value, headers)

    async def _dead_letter(self, letter: DeadLetter) -> asyncio.Future[Any]:
        record = letter.record
        value, key = record.value, record.key
        # The producer's headers go along byte for byte, repeats and all; dlq_* ones from an
        # earlier trip through the DLQ would contradict this one's.
        headers = [(k, bytes(v or b"")) for k, v in record.headers if not k.startswith(DLQ_PREFIX)]
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in headers)
        if size > DEAD_LETTER_MAX_BYTES or letter.bare:
            headers = [
                ("dlq_truncated", b"true"),
                ("dlq_original_size", str(len(value or b"")).encode()),
            ]
            key = key[:_DEAD_LETTER_KEY_MAX] if key is not None else None
            keep = 0 if letter.bare else DEAD_LETTER_MAX_BYTES - 2 * _DEAD_LETTER_KEY_MAX
            value = (value or b"")[:keep]
        about = {
            "dlq_reason": letter.reason,
            "dlq_error": letter.error[:1000],
            "dlq_source_topic": record.topic,
            "dlq_source_partition": str(record.partition),
            "dlq_source_offset": str(record.offset),
            "dlq_source_timestamp": str(record.timestamp),
        }
        headers += [(k, v.encode()) for k, v in about.items()]
        sent: asyncio.Future[Any] = await self._producer.send(
            self._settings.topic_dlq, value, key=key, headers=headers
        )
        return sent


_JSON_CONTENT = ("content-type", b"application/json")
# Every record the service sends stays under Kafka's default limit of about 1 MiB (the
# broker's message.max.bytes, the producer's max_request_size), whatever was stored.
EVENT_MAX_BYTES = 1_000_000
RESULT_MAX_BYTES = 1_000_000
# Key and headers of an event: ids and names the service checked, a valid traceparent.
_EVENT_HEADROOM = 4096


def _headers(reply: Reply) -> list[tuple[str, bytes]]:
    headers = [_JSON_CONTENT]
    if reply.correlation_id is not None:
        headers.append(("correlation_id", reply.correlation_id))
    return headers


def cloudevent_headers(row: OutboxRow, source: bytes) -> list[tuple[str, bytes]]:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", row.event_id.encode()),
        ("ce_type", row.event_type.encode()),
        ("ce_source", source),
        ("ce_subject", row.group_id.encode()),
        ("ce_time", format_time(row.occurred_at).encode()),
        _JSON_CONTENT,
        ("ce_organizationid", row.organization_id.encode()),
        ("ce_groupversion", str(row.group_version).encode()),
        ("ce_commandid", row.command_id.encode()),
    ]
    # Rows written before traceparent was checked may hold one that breaks W3C's rule.
    if row.traceparent and valid_traceparent(row.traceparent):
        headers.append(("traceparent", row.traceparent.encode()))
    return headers


def state_headers(row: OutboxRow) -> list[tuple[str, bytes]]:
    """A compacting reader keeps the highest version per group, as event consumers do."""
    return [
        _JSON_CONTENT,
        ("ce_id", row.event_id.encode()),
        ("ce_groupversion", str(row.group_version).encode()),
    ]


def state_value(row: OutboxRow) -> bytes | None:
    """The compacted state topic holds the latest group; a delete leaves a tombstone."""
    if row.event_type == "group.deleted":
        return None
    if row.event_type == "group.created":
        return row.payload.encode()
    group = orjson.loads(row.payload)
    group.pop("previous", None)
    return orjson.dumps(group)


class EventPublisher:
    """Publishes outbox rows as CloudEvents (binary mode) and, optionally, to the state topic."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        settings: Settings,
        *,
        topic: str | None = None,
        state_topic: str | None = None,
    ) -> None:
        self._producer = producer
        self._source = settings.ce_source.encode()
        self._topic = topic or settings.topic_events
        self._state_topic = state_topic

    @staticmethod
    def refusal(row: OutboxRow) -> str | None:
        """Why Kafka could never take this row's event, or None. Checked before sending: a
        record the broker refuses leaves an idempotent producer's sequence broken."""
        if len(row.payload) * 4 + _EVENT_HEADROOM <= EVENT_MAX_BYTES:
            return None  # it fits even if every character takes four bytes
        if len(row.payload.encode()) + _EVENT_HEADROOM > EVENT_MAX_BYTES:
            return f"the event is larger than {EVENT_MAX_BYTES} bytes"
        return None

    async def publish(self, rows: Sequence[OutboxRow], *, state_only: bool = False) -> None:
        """Returns once Kafka has settled every row; raises if any was not acknowledged."""
        pending: list[asyncio.Future[Any]] = []
        if not state_only:
            events = [
                (row.group_id.encode(), row.payload.encode(), cloudevent_headers(row, self._source))
                for row in rows
            ]
            pending += await send_batches(self._producer, self._topic, events)
        if self._state_topic:
            states = [(row.group_id.encode(), state_value(row), state_headers(row)) for row in rows]
            pending += await send_batches(self._producer, self._state_topic, states)
        # Every send settles before this returns, so a relay that hands over after a failed
        # publish has nothing left on its way.
        for outcome in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
