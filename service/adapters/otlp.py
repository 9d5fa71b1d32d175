"""Spans to an OTLP/HTTP collector: the SDK's exporter, with the spans the service makes per
command and per event encoded by hand.

Why by hand: the stock encoder builds a protobuf object per span and per attribute, and the
SDK's span objects validate every attribute; at the consumer's rate that cost far more than
the work being traced (docs/benchmark.md). A `HotSpan` is a few slots, its shape (name,
kind, constant attributes) is encoded once, and its bytes are written directly: by the
thread that ends it, so that the export thread (service/adapters/span_queue.py) only joins
and sends bytes. The SDK's own spans (HTTP requests, batches, PostgreSQL) take its stock
path and processor."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanKind


def _varint_slow(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint(value: int) -> bytes:
    # Lengths and small numbers without the loop: most of what is encoded.
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0x200000:  # Kafka offsets, for a while
        return bytes(((value & 0x7F) | 0x80, (value >> 7 & 0x7F) | 0x80, value >> 14))
    return _varint_slow(value)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _string_value(value: str) -> bytes:
    return field(1, value.encode())  # AnyValue.string_value


def _int_value(value: int) -> bytes:
    return b"\x18" + _varint_slow(value & 0xFFFFFFFFFFFFFFFF)  # AnyValue.int_value, int64


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


# Text values of up to this many bytes (every id the service checked) take the table's path.
_SHORT = 256


class _Key:
    """A span attribute whose value varies: every byte before a value's own, encoded once
    per value length, so that a value costs one lookup and one concatenation."""

    __slots__ = ("_key", "_text")

    def __init__(self, name: str) -> None:
        self._key = field(1, name.encode())
        self._text = tuple(self._text_prefix(n) for n in range(_SHORT))

    def _text_prefix(self, length: int) -> bytes:
        value = b"\x0a" + varint(length)  # AnyValue.string_value, before its bytes
        inner = self._key + b"\x12" + varint(len(value) + length) + value
        return b"\x4a" + varint(len(inner) + length) + inner

    def encode(self, value: str | int) -> bytes:
        if type(value) is str:
            text = value.encode()
            size = len(text)
            return (self._text[size] if size < _SHORT else self._text_prefix(size)) + text
        encoded = b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)  # type: ignore[operator]
        inner = self._key + b"\x12" + varint(len(encoded)) + encoded
        return b"\x4a" + varint(len(inner)) + inner


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
        self.keys = tuple(_Key(k) for k in variable)


class HotSpan:
    """A span of the hot path, until encode_span() writes it."""

    __slots__ = (
        "end",
        "error",
        "link",
        "parent_id",
        "shape",
        "span_id",
        "start",
        "trace_id",
        "values",
    )

    def __init__(
        self,
        shape: SpanShape,
        trace_id: bytes,
        span_id: bytes,
        parent_id: bytes,
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
        self.values = values  # one per shape.keys; None: the attribute is left out
        self.link = b""  # link_to(): shared by the spans of a batch
        self.error: str | None = None


_TIMES = struct.Struct("<BQBQ")
_FLAGS = struct.Struct("<BBI")
# Span.flags: the context's trace flags (sampled), and that the parent's remoteness is known
# (0x100) and, when there is a parent, remote (0x200): every parent a hot span has came
# from a Kafka header or an outbox row.
_ROOT_FLAGS = _FLAGS.pack(0x85, 0x01, 0x101)
_CHILD_FLAGS = _FLAGS.pack(0x85, 0x01, 0x301)


def link_to(trace_id: bytes, span_id: bytes) -> bytes:
    """A Span.links entry (field 13) naming another span."""
    return field(13, b"\x0a\x10" + trace_id + b"\x12\x08" + span_id)


def encode_span(span: HotSpan) -> bytes:
    parts = [
        b"\x0a\x10",
        span.trace_id,
        b"\x12\x08",
        span.span_id,
        b"\x22\x08" + span.parent_id if span.parent_id else b"",
        span.shape.encoded,
        _TIMES.pack(0x39, span.start, 0x41, span.end),
        span.link,
        _CHILD_FLAGS if span.parent_id else _ROOT_FLAGS,
    ]
    for key, value in zip(span.shape.keys, span.values, strict=True):
        if value is not None:
            parts.append(key.encode(value))
    if span.error is not None:
        parts.append(attribute("error.type", span.error))
        parts.append(field(15, b"\x18\x02"))  # Status{code: ERROR}
    body = b"".join(parts)
    return b"\x12" + varint(len(body)) + body  # ScopeSpans.spans


class Encoder:
    """Export requests for one resource and instrumentation scope."""

    def __init__(self, resource: Resource, scope: str) -> None:
        attributes = resource.attributes.items()
        self._resource = field(1, b"".join(attribute(k, v, 1) for k, v in attributes))  # type: ignore[arg-type]
        self._scope = field(1, field(1, scope.encode()))

    def request(self, encoded: Sequence[bytes]) -> bytes:
        """The request carrying spans encode_span() wrote."""
        return field(1, self._resource + field(2, self._scope + b"".join(encoded)))


class Exporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP exporter (its endpoint, headers, TLS, compression, timeout and
    retries from the OTEL_* variables), sending hot spans encoded beforehand."""

    def __init__(self, resource: Resource, scope: str) -> None:
        super().__init__()
        self._encoder = Encoder(resource, scope)

    def send(self, encoded: Sequence[bytes]) -> bool:
        if self._shutdown:
            return False
        # The SDK's own client: the HTTP session, retries and compression it was built with.
        return bool(self._client.export(self._encoder.request(encoded)).success)
