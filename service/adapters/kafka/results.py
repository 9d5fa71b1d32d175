"""Command results and dead letters to Kafka."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import (
    AIOKafkaProducer,
    ConsumerRecord,
)

from service.adapters.kafka.batches import JSON_CONTENT, Message, send_batches
from service.adapters.kafka.reply_copies import ReplyCopies
from service.config import Settings
from service.domain.results import CommandResult
from service.observability import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reply:
    result: CommandResult
    reply_to: str | None = None
    # Bytes: it goes back exactly as the producer sent it, UTF-8 or not.
    correlation_id: bytes | None = None
    # The command span's (or, with tracing off, the producer's checked one).
    traceparent: str | None = None


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


RESULT_MAX_BYTES = 1_000_000


def _headers(reply: Reply) -> list[tuple[str, bytes]]:
    headers = [JSON_CONTENT]
    if reply.correlation_id is not None:
        headers.append(("correlation_id", reply.correlation_id))
    if reply.traceparent is not None:
        headers.append(("traceparent", reply.traceparent.encode()))
    return headers
