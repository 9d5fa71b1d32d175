"""Spans to an OTLP/HTTP collector: the SDK's exporter, with the spans the service makes per
command and per event encoded by hand.

Why by hand: the stock encoder builds a protobuf object per span and per attribute, and the
SDK's span objects validate every attribute; at the consumer's rate that cost far more than
the work being traced (docs/benchmark.md). A `HotSpan` is a few slots, its shape (name,
kind, constant attributes) is encoded once, and its bytes are written directly. The SDK's
own spans (HTTP requests, batches, PostgreSQL) take the stock path, and both go out in one
export request: protobuf appends repeated fields of concatenated messages."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags


def _varint_slow(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint(value: int) -> bytes:
    # Lengths and small numbers (one or two bytes) without the loop: most of what is encoded.
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    return _varint_slow(value)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _string_value(value: str) -> bytes:
    return field(1, value.encode())  # AnyValue.string_value


def _int_value(value: int) -> bytes:
    return b"\x18" + _varint_slow(value & 0xFFFFFFFFFFFFFFFF)  # AnyValue.int_value, int64


def _unique_attribute(key: bytes, value: str | int) -> bytes:
    """attribute() for a key encoded beforehand (field(1, key)): the per-span path."""
    if type(value) is int:
        encoded = b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)
    else:
        text = str(value).encode()
        encoded = b"\x0a" + varint(len(text)) + text
    inner = key + b"\x12" + varint(len(encoded)) + encoded
    return b"\x4a" + varint(len(inner)) + inner


def attribute(key: str, value: str | int | bool, number: int = 9) -> bytes:
    """A KeyValue{key, AnyValue} entry: of Span.attributes (field 9), or of another
    message's `number`."""
    if isinstance(value, bool):
        encoded = b"\x10\x01" if value else b"\x10\x00"
    elif isinstance(value, int):
        encoded = _int_value(value)
    else:
        encoded = _string_value(str(value))
    return field(number, field(1, key.encode()) + field(2, encoded))


def key(name: str) -> bytes:
    """An attribute key encoded once, for HotSpan.unique."""
    return field(1, name.encode())


class SpanShape:
    """What every span of one kind shares, encoded once: its name, kind and constant
    attributes, and the keys of its variable ones."""

    def __init__(
        self,
        name: str,
        kind: SpanKind,
        constant: dict[str, str | int],
        variable: Sequence[str],
    ) -> None:
        self.name = name
        # The protocol's SpanKind numbers the API's from 1.
        encoded = field(5, name.encode()) + b"\x30" + varint(kind.value + 1)
        self.encoded = encoded + b"".join(attribute(k, v) for k, v in constant.items())
        self.keys = tuple(variable)
        self.caches: tuple[dict[str | int, bytes], ...] = tuple({} for _ in variable)

    def value(self, index: int, value: str | int) -> bytes:
        """Values repeat (organizations, groups, partitions): each is encoded once."""
        cache = self.caches[index]
        if len(cache) >= 20_000:
            cache.clear()
        encoded = cache[value] = attribute(self.keys[index], value)
        return encoded


_SAMPLED = SpanContext(1, 1, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))


class HotSpan:
    """A finished span of the hot path, as the batch span processor and the encoder see it."""

    __slots__ = (
        "end",
        "error",
        "link",
        "parent_id",
        "shape",
        "span_id",
        "start",
        "trace_id",
        "unique",
        "values",
    )

    # All BatchSpanProcessor reads of a span: only sampled spans are handed to it.
    context = _SAMPLED

    def __init__(
        self,
        shape: SpanShape,
        trace_id: int,
        span_id: int,
        parent_id: int,
        *,
        start: int,
        values: tuple[str | int | None, ...],
    ) -> None:
        self.shape = shape
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.start = start
        self.end = start
        self.values = values
        # Values met once (command and event ids): not worth a place in the shape's cache.
        self.unique: tuple[tuple[bytes, str | int], ...] = ()
        self.link = b""  # link_to(): shared by the spans of a batch
        self.error: str | None = None


_TIMES = struct.Struct("<BQBQ")
_FLAGS = struct.Struct("<BBI")
# Span.flags: the context's trace flags (sampled), and that the parent's remoteness is known
# (0x100) and, when there is a parent, remote (0x200): every parent a hot span has came
# from a Kafka header or an outbox row.
_ROOT_FLAGS = _FLAGS.pack(0x85, 0x01, 0x101)
_CHILD_FLAGS = _FLAGS.pack(0x85, 0x01, 0x301)


def link_to(trace_id: int, span_id: int) -> bytes:
    """A Span.links entry (field 13) naming another span."""
    link = b"\x0a\x10" + trace_id.to_bytes(16, "big") + b"\x12\x08" + span_id.to_bytes(8, "big")
    return field(13, link)


def encode_span(span: HotSpan) -> bytes:
    shape = span.shape
    parts = [
        b"\x0a\x10" + span.trace_id.to_bytes(16, "big") + b"\x12\x08",
        span.span_id.to_bytes(8, "big"),
    ]
    if span.parent_id:
        parts.append(b"\x22\x08" + span.parent_id.to_bytes(8, "big"))
    parts.append(shape.encoded)
    parts.append(_TIMES.pack(0x39, span.start, 0x41, span.end))
    for index, (cache, value) in enumerate(zip(shape.caches, span.values, strict=True)):
        if value is not None:
            parts.append(cache.get(value) or shape.value(index, value))
    for key, unique in span.unique:
        parts.append(_unique_attribute(key, unique))
    if span.error is not None:
        parts.append(attribute("error.type", span.error))
        parts.append(field(15, b"\x18\x02"))  # Status{code: ERROR}
    parts.append(span.link)
    parts.append(_CHILD_FLAGS if span.parent_id else _ROOT_FLAGS)
    return field(2, b"".join(parts))  # ScopeSpans.spans


class Encoder:
    """Export requests for one resource and instrumentation scope."""

    def __init__(self, resource: Resource, scope: str) -> None:
        attributes = resource.attributes.items()
        self._resource = field(1, b"".join(attribute(k, v, 1) for k, v in attributes))  # type: ignore[arg-type]
        self._scope = field(1, field(1, scope.encode()))

    def request(self, spans: Sequence[HotSpan]) -> bytes:
        scope_spans = field(2, self._scope + b"".join(encode_span(s) for s in spans))
        return field(1, self._resource + scope_spans)


class Exporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP exporter (its endpoint, headers, TLS, compression, timeout and
    retries from the OTEL_* variables), given hot spans besides the SDK's own."""

    def __init__(self, resource: Resource, scope: str) -> None:
        super().__init__()
        self._encoder = Encoder(resource, scope)

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        hot = [s for s in spans if type(s) is HotSpan]
        if len(hot) < len(spans):
            others: list[ReadableSpan] = [s for s in spans if type(s) is not HotSpan]
            if not hot:
                return super().export(others)
            data = encode_spans(others).SerializePartialToString()
        else:
            data = b""
        if self._shutdown:
            return SpanExportResult.FAILURE
        # The SDK's own client: the HTTP session, retries and compression it was built with.
        result = self._client.export(data + self._encoder.request(hot))
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE
