"""The spans along a command's path: the producer's span → `process <commands topic>` (one
per command, a batch span linking them, the PostgreSQL work under the batch span) → `send
<events topic>` in the relay, whose context is the event's traceparent. The outbox stores
the command span's context, so the event continues the service's trace, not the producer's.
HTTP writes publish their command under a `send <commands topic>` span of the request."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
    use_span,
)

from service.adapters.kafka import Record
from service.adapters.otlp import HotSpan, SpanShape, link_to
from service.domain.ports import AnyCommand
from service.observability import command_ids
from service.parsing import Invalid
from service.tracing import Tracing, format_traceparent


def kafka_attributes(operation: str, topic: str) -> dict[str, Any]:
    """Messaging semantic conventions for a Kafka record."""
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": topic,
    }


def ids(
    organization_id: str | None, command_id: str | None, group_id: str | None
) -> dict[str, str]:
    """The service's own span attributes."""
    known = command_ids(organization_id, command_id, group_id)
    return {f"customer_groups.{k}": v for k, v in known.items()}


class _ShapesBy:
    """The shapes of spans that differ in one constant attribute (a partition, an event
    type), by its value: each value is encoded once, with the other constants."""

    def __init__(
        self,
        tracing: Tracing,
        name: str,
        kind: SpanKind,
        constant: dict[str, Any],
        *,
        by: str,
        variable: tuple[str, ...],
    ) -> None:
        self._tracing = tracing
        self._shape = (name, kind, constant, variable)
        self._by = by
        self.known: dict[str | int, SpanShape] = {}

    def add(self, value: str | int) -> SpanShape:
        name, kind, constant, variable = self._shape
        constant = constant | {self._by: str(value)}
        shape = self.known[value] = self._tracing.shape(name, kind, constant, variable)
        return shape


_PROCESS_VALUES = (
    "messaging.kafka.offset",
    "customer_groups.organization_id",
    "customer_groups.command_id",
    "customer_groups.group_id",
)
_BATCH_VALUES = ("messaging.batch.message_count",)


class UntracedCommands:
    """A batch of command records with tracing off: each command passes its producer's
    traceparent on, and nothing else happens."""

    def start(
        self,
        position: int,  # noqa: ARG002
        record: Record,  # noqa: ARG002
        producer_traceparent: str | None,
        parsed: AnyCommand | Invalid,  # noqa: ARG002
    ) -> str | None:
        return producer_traceparent

    def fail(self, position: int, error_type: str) -> None:
        pass

    def batch(self, count: int) -> AbstractContextManager[None]:  # noqa: ARG002
        return nullcontext()

    def end(self) -> None:
        pass


class CommandSpans(UntracedCommands):
    """The spans of one batch of command records: one per record, child of its producer's
    traceparent, and one for the batch, linking them, under which the batch's PostgreSQL
    work runs. A command's traceparent (for its event and result) is its span's."""

    def __init__(self, tracing: Tracing, topic: str, consumer_group: str) -> None:
        self._tracing = tracing
        self._name = f"process {topic}"
        self._constant = kafka_attributes("process", topic)
        self._constant["messaging.consumer.group.name"] = consumer_group
        self._shapes = _ShapesBy(
            tracing,
            self._name,
            SpanKind.CONSUMER,
            self._constant,
            by="messaging.destination.partition.id",
            variable=_PROCESS_VALUES,
        )
        self._spans: dict[int, HotSpan] = {}
        self._errors: dict[int, str] = {}
        self._link = b""

    def start(
        self,
        position: int,
        record: Record,
        producer_traceparent: str | None,
        parsed: AnyCommand | Invalid,
    ) -> str:
        """`parsed`: the command, or why not (with its ids where they could be read)."""
        shapes = self._shapes
        shape = shapes.known.get(record.partition) or shapes.add(record.partition)
        values = (
            record.offset,
            parsed.organization_id,
            parsed.command_id,
            getattr(parsed, "group_id", None),
        )
        span, traceparent = self._tracing.hot.start(shape, producer_traceparent, values)
        if span is not None:
            self._spans[position] = span
        return traceparent

    def fail(self, position: int, error_type: str) -> None:
        if position in self._spans:
            self._errors[position] = error_type

    @contextmanager
    def batch(self, count: int) -> Iterator[None]:
        """The batch span, current while the batch is applied (the parent of its PostgreSQL
        spans), linking each command's (as many as OTEL_SPAN_LINK_COUNT_LIMIT allows)."""
        shape = self._tracing.shape(self._name, SpanKind.CONSUMER, self._constant, _BATCH_VALUES)
        span, traceparent = self._tracing.hot.start(shape, None, (count,))
        if span is not None:
            self._link = link_to(span[1], span[2])
        trace_id, span_id, flags = (
            int(traceparent[i:j], 16) for i, j in ((3, 35), (36, 52), (53, 55))
        )
        context = SpanContext(trace_id, span_id, False, TraceFlags(flags))
        with use_span(NonRecordingSpan(context)):
            yield
        if span is not None:
            linked = list(self._spans.values())[: self._tracing.max_links]
            self._tracing.hot.end((span,), b"".join(link_to(s[1], s[2]) for s in linked))

    def end(self) -> None:
        hot, failed = self._tracing.hot, self._errors
        hot.end((s for p, s in self._spans.items() if p not in failed), self._link)
        for position, error in failed.items():
            hot.end((self._spans[position],), self._link, error)
        self._spans.clear()
        self._errors.clear()


_UNTRACED = UntracedCommands()


def command_spans(tracing: Tracing, topic: str, consumer_group: str) -> UntracedCommands:
    """A batch's spans, or with tracing off what passes the producers' traceparents on."""
    if not tracing.enabled:
        return _UNTRACED
    return CommandSpans(tracing, topic, consumer_group)


@contextmanager
def database_span(tracer: Tracer, operation: str, summary: str, count: int) -> Iterator[None]:
    """A span for the PostgreSQL work of a batch, under the span current now."""
    attributes: dict[str, str | int] = {
        "db.system.name": "postgresql",
        "db.operation.name": operation,
        "db.query.summary": summary,
        "db.operation.batch.size": count,
    }
    with tracer.start_as_current_span(summary, kind=SpanKind.CLIENT, attributes=attributes):
        yield


_SEND_VALUES = (
    "customer_groups.organization_id",
    "customer_groups.group_id",
    "messaging.message.id",
    "customer_groups.command_id",
)


class SendSpans:
    """`send` spans of the events the relay publishes, each child of the command span its
    outbox row stored; an event's traceparent is its span's."""

    def __init__(self, tracing: Tracing, topic: str) -> None:
        self._tracing = tracing
        self._shapes = _ShapesBy(
            tracing,
            f"send {topic}",
            SpanKind.PRODUCER,
            kafka_attributes("send", topic),
            by="cloudevents.event_type",
            variable=_SEND_VALUES,
        )
        self.spans: list[HotSpan] = []

    def start(self, parent: str | None, event_type: str, values: tuple[str, str, str, str]) -> str:
        """`values`: the organization, group, event id and command id."""
        shape = self._shapes.known.get(event_type) or self._shapes.add(event_type)
        span, traceparent = self._tracing.hot.start(shape, parent, values)
        if span is not None:
            self.spans.append(span)
        return traceparent

    def end(self, error: BaseException | None = None) -> None:
        """Once Kafka acknowledged the records, or refused them (`error`)."""
        self._tracing.hot.end(self.spans, error=None if error is None else type(error).__name__)
        self.spans.clear()


@contextmanager
def send_span(
    tracing: Tracing, topic: str, about: dict[str, str], untraced: str | None
) -> Iterator[str | None]:
    """A `send` span under the current one, around a single publish; yields the record's
    traceparent: the span's, or with tracing off `untraced`."""
    if not tracing.enabled:
        yield untraced
        return
    attributes = kafka_attributes("send", topic)
    attributes.update(about)
    with tracing.tracer.start_as_current_span(
        f"send {topic}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        context = span.get_span_context()
        yield format_traceparent(
            f"{context.trace_id:032x}",
            f"{context.span_id:016x}",
            sampled=context.trace_flags.sampled,
        )
