"""Outbox rows as CloudEvents on the events topic, and as the latest group on the state topic."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import (
    AIOKafkaProducer,
)

from service.adapters.kafka.batches import JSON_CONTENT, send_batches
from service.adapters.postgres.outbox_store import OutboxRow
from service.config import Settings
from service.domain.headers import valid_traceparent
from service.domain.model import format_time
from service.spans import SendSpans
from service.tracing import Tracing

# Every record the service sends stays under Kafka's default limit of about 1 MiB (the
# broker's message.max.bytes, the producer's max_request_size), whatever was stored.
EVENT_MAX_BYTES = 1_000_000
EVENT_SCHEMA = "event.schema.json"


# Key and headers of an event: ids and names the service checked, a valid traceparent.
_EVENT_HEADROOM = 4096


def cloudevent_headers(
    row: OutboxRow, source: bytes, dataschema: bytes, traceparent: str | None
) -> list[tuple[str, bytes]]:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", row.event_id.encode()),
        ("ce_type", row.event_type.encode()),
        ("ce_source", source),
        ("ce_subject", row.group_id.encode()),
        ("ce_time", format_time(row.occurred_at).encode()),
        JSON_CONTENT,
        ("ce_organizationid", row.organization_id.encode()),
        ("ce_groupversion", str(row.group_version).encode()),
        ("ce_commandid", row.command_id.encode()),
    ]
    if dataschema:
        headers.append(("ce_dataschema", dataschema))
    if traceparent:
        headers.append(("traceparent", traceparent.encode()))
    return headers


def dataschema(settings: Settings) -> str:
    """The ce_dataschema of every event: the event value's JSON Schema, or "" for none."""
    base = settings.ce_dataschema_base.rstrip("/")
    return f"{base}/{EVENT_SCHEMA}" if base else ""


def stored_traceparent(row: OutboxRow) -> str | None:
    # Rows written before traceparent was checked may hold one that breaks W3C's rule.
    if row.traceparent and valid_traceparent(row.traceparent):
        return row.traceparent
    return None


def state_headers(row: OutboxRow) -> list[tuple[str, bytes]]:
    """A compacting reader keeps the highest version per group, as event consumers do."""
    return [
        JSON_CONTENT,
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
    group.pop("customer_ids", None)
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
        tracing: Tracing | None = None,
    ) -> None:
        self._producer = producer
        self._tracing = tracing or Tracing()
        self._source = settings.ce_source.encode()
        self._dataschema = dataschema(settings).encode()
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
        spans = SendSpans(self._tracing, self._topic)
        if not state_only:
            events = [
                (
                    row.group_id.encode(),
                    row.payload.encode(),
                    cloudevent_headers(
                        row, self._source, self._dataschema, self._traceparent(row, spans)
                    ),
                )
                for row in rows
            ]
            pending += await send_batches(self._producer, self._topic, events)
        if self._state_topic:
            states = [(row.group_id.encode(), state_value(row), state_headers(row)) for row in rows]
            pending += await send_batches(self._producer, self._state_topic, states)
        # Every send settles before this returns, so a relay that hands over after a failed
        # publish has nothing left on its way.
        failed = next(
            (
                outcome
                for outcome in await asyncio.gather(*pending, return_exceptions=True)
                if isinstance(outcome, BaseException)
            ),
            None,
        )
        spans.end(failed)
        if failed is not None:
            raise failed

    def _traceparent(self, row: OutboxRow, spans: SendSpans) -> str | None:
        """The event's: its send span's, child of the command's span the row stored."""
        stored = stored_traceparent(row)
        if not self._tracing.enabled:
            return stored
        values = (row.organization_id, row.group_id, row.event_id, row.command_id)
        return spans.start(stored, row.event_type, values)
