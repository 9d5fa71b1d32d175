"""Kafka headers a producer sends and the service copies onto what it sends back.

Whatever the input, a copied value is small and well-formed: a header that breaks its rule
is dropped (never stored, never sent), and the command is handled as if it had not been
there. Each function returns the value to keep, or a `Refused` saying why not."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# Kafka's own rule for topic names (org.apache.kafka.common.internals.Topic).
TOPIC_MAX = 249
_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")
# A result echoes the producer's correlation id byte for byte; past this it is not echoed.
CORRELATION_ID_MAX_BYTES = 256

# W3C Trace Context, level 1: version 00 is exactly this; a later version may append
# fields after a dash, which a version-00 reader keeps as they are.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACEPARENT_00 = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_TRACEPARENT_MAX = 512
# What a later version may append after a dash, kept as it came: visible ASCII only (a NUL
# cannot be stored, a control character must not reach anyone's terminal or logs).
_LATER_FIELDS = re.compile(r"-[\x21-\x7e]*")
# tracestate: at most 32 list members and 512 characters in all.
TRACESTATE_MAX = 512
_TRACESTATE_MEMBERS_MAX = 32
_TRACESTATE_KEY = re.compile(
    r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
)
_TRACESTATE_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


@dataclass(frozen=True, slots=True)
class Refused:
    header: str
    reason: str


def _text(header: str, raw: bytes, limit: int) -> str | Refused:
    if not raw:
        return Refused(header, "empty")
    if len(raw) > limit:
        return Refused(header, "too_long")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return Refused(header, "not_ascii")


def reply_to(raw: bytes, own_topics: frozenset[str]) -> str | Refused:
    """A topic the result may be copied to: a legal Kafka topic name, not one of ours."""
    topic = _text("reply_to", raw, TOPIC_MAX)
    if isinstance(topic, Refused):
        return topic
    if not _TOPIC.fullmatch(topic) or topic in (".", ".."):
        return Refused("reply_to", "not_a_topic_name")
    if topic in own_topics:
        return Refused("reply_to", "service_topic")
    return topic


def correlation_id(raw: bytes) -> bytes | Refused:
    """Echoed exactly as sent, UTF-8 or not, when it is 1-256 bytes long."""
    if not raw:
        return Refused("correlation_id", "empty")
    if len(raw) > CORRELATION_ID_MAX_BYTES:
        return Refused("correlation_id", "too_long")
    return raw


def traceparent(raw: bytes) -> str | Refused:
    value = _text("traceparent", raw, _TRACEPARENT_MAX)
    if isinstance(value, Refused):
        return value
    return value if valid_traceparent(value) else Refused("traceparent", "invalid")


def valid_traceparent(value: str) -> bool:
    if _TRACEPARENT_00.fullmatch(value):  # what nearly every producer sends, checked faster
        return value[3:35] != _ZERO_TRACE and value[36:52] != _ZERO_SPAN
    match = _TRACEPARENT.match(value)
    if match is None:
        return False
    version, trace_id, span_id, _ = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return False
    if version == "00":
        return len(value) == match.end()
    rest = value[match.end() :]
    return len(value) <= _TRACEPARENT_MAX and (
        not rest or _LATER_FIELDS.fullmatch(rest) is not None
    )


def tracestate(raw: bytes) -> str | Refused:
    value = _text("tracestate", raw, TRACESTATE_MAX)
    if isinstance(value, Refused):
        return value
    return value if valid_tracestate(value) else Refused("tracestate", "invalid")


def valid_tracestate(value: str) -> bool:
    members = [m.strip(" \t") for m in value.split(",")]
    members = [m for m in members if m]
    if not members or len(members) > _TRACESTATE_MEMBERS_MAX or len(value) > TRACESTATE_MAX:
        return False
    keys = set()
    for member in members:
        key, sep, state = member.partition("=")
        if not sep or not _TRACESTATE_KEY.fullmatch(key) or not _TRACESTATE_VALUE.fullmatch(state):
            return False
        if key in keys:
            return False
        keys.add(key)
    return True
