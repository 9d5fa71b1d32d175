"""Spans to an OTLP/HTTP collector: the SDK's exporter, with the spans the service makes per
command and per event encoded by hand.

Why by hand: the stock encoder builds a protobuf object per span and per attribute, and the
SDK's span objects validate every attribute; at the consumer's rate that cost far more than
the work being traced (docs/benchmark.md). A `HotSpan` is a tuple, its shape (name, kind,
constant attributes) is encoded once, and its bytes are written directly: by the thread
that ends it, so that the export thread (service/adapters/span_queue.py) only joins and
sends bytes. The SDK's own spans (HTTP requests, PostgreSQL) take its stock path and
processor."""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Sequence

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
    return b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)  # AnyValue.int_value, int64


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
    per length of the value's encoding, so that a value costs one lookup and one
    concatenation."""

    __slots__ = ("_key", "integer", "text")

    def __init__(self, name: str) -> None:
        self._key = field(1, name.encode())
        self.text = tuple(self.text_prefix(n) for n in range(_SHORT))
        # AnyValue.int_value: a varint of 1 to 10 bytes.
        self.integer = tuple(self._prefix(b"\x18", n) if n else b"" for n in range(11))

    def _prefix(self, value_prefix: bytes, length: int) -> bytes:
        inner = self._key + b"\x12" + varint(len(value_prefix) + length) + value_prefix
        return b"\x4a" + varint(len(inner) + length) + inner

    def text_prefix(self, size: int) -> bytes:
        """What comes before a text value of `size` bytes (AnyValue.string_value)."""
        return self._prefix(b"\x0a" + varint(size), size)

    def encode_int(self, value: int) -> bytes:
        encoded = varint(value & 0xFFFFFFFFFFFFFFFF)  # int64, two's complement
        return self.integer[len(encoded)] + encoded


@functools.cache
def _key(name: str) -> _Key:
    return _Key(name)


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
        self.keys = tuple(_key(k) for k in variable)


# A span of the hot path, until encode_span() writes it: its shape, trace id, span id,
# parent span id (b"": none), start time (ns since the epoch), and one value per
# shape.keys (None: left out). A tuple: made for every command and every event.
HotSpan = tuple[SpanShape, bytes, bytes, bytes, int, tuple[str | int | None, ...]]

# Every fixed-size field of a span in one pack (a protobuf reader takes fields in any
# order): trace id, span id, parent span id, start and end times, and Span.flags: the
# context's trace flags (sampled), and that the parent's remoteness is known (0x100) and,
# when there is a parent, remote (0x200): every parent a hot span has came from a Kafka
# header or an outbox row.
_ROOT = struct.Struct("<H16sH8sBQBQBBI")
_CHILD = struct.Struct("<H16sH8sH8sBQBQBBI")
_LINK = struct.Struct("<HH16sH8s")
_ERROR_STATUS = field(15, b"\x18\x02")  # Status{code: ERROR}


def link_to(trace_id: bytes, span_id: bytes) -> bytes:
    """A Span.links entry (field 13) naming another span."""
    return _LINK.pack(0x1C6A, 0x100A, trace_id, 0x0812, span_id)


def encode_spans(
    spans: Iterable[HotSpan], end: int, link: bytes = b"", error: str | None = None
) -> list[bytes]:
    """Spans ending together: `end` their end time (ns since the epoch), `link` their
    link_to()s, `error` their error.type."""
    failed = b"" if error is None else attribute("error.type", error) + _ERROR_STATUS
    encoded = []
    for shape, trace_id, span_id, parent_id, start, values in spans:
        if parent_id:
            fixed = _CHILD.pack(
                0x100A, trace_id, 0x0812, span_id, 0x0822, parent_id, 0x39, start, 0x41, end,
                0x85, 0x01, 0x301,
            )  # fmt: skip
        else:
            fixed = _ROOT.pack(
                0x100A, trace_id, 0x0812, span_id, 0x39, start, 0x41, end, 0x85, 0x01, 0x101
            )
        parts = [fixed, shape.encoded, link, failed]
        for key, value in zip(shape.keys, values, strict=True):
            if type(value) is str:
                text = value.encode()
                size = len(text)
                parts.append((key.text[size] if size < _SHORT else key.text_prefix(size)) + text)
            elif value is not None:
                parts.append(key.encode_int(value))  # type: ignore[arg-type]
        body = b"".join(parts)
        encoded.append(b"\x12" + varint(len(body)) + body)  # ScopeSpans.spans
    return encoded


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
