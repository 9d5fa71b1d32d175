"""The header rules against whatever bytes a producer sends: a kept value is well-formed."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.domain import headers
from service.domain.headers import Refused

FUZZ = settings(max_examples=100, deadline=None)

TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")
TOPIC_NAMES = st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=249)
TOPIC_EDGES = st.sampled_from([".", "..", "...", "._", "t" * 249, "t" * 250, "", "t\n", "t/u"])
OWN_TOPICS = st.frozensets(TOPIC_NAMES | st.sampled_from(["commands", "events"]), max_size=4)
# W3C Trace Context: version-00 is exactly the four fields; a later version may add more
# after a dash (kept only if visible ASCII). Version ff and all-zero ids are invalid.
W3C_TRACEPARENT = re.compile(
    r"(?!ff)([0-9a-f]{2})-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(-[!-~]*)?"
)
TRACESTATE_KEY = re.compile(
    r"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"
)
TRACESTATE_VALUE = re.compile(r"[ -+\--<>-~]{0,255}[!-+\--<>-~]")

ANY_BYTES = st.binary(max_size=600)


def hex_digits(size: int) -> st.SearchStrategy[str]:
    return st.text("0123456789abcdef", min_size=size, max_size=size)


def refused(value: object, header: str) -> bool:
    if isinstance(value, Refused):
        assert value.header == header
        return True
    return False


def check_reply_to(raw: bytes, own_topics: frozenset[str]) -> str | Refused:
    kept = headers.reply_to(raw, own_topics)
    if not refused(kept, "reply_to"):
        assert isinstance(kept, str)
        assert TOPIC.fullmatch(kept)
        assert kept not in (".", "..")
        assert kept not in own_topics
        assert kept.encode() == raw
    return kept


@FUZZ
@given(ANY_BYTES, OWN_TOPICS)
def test_reply_to_of_any_bytes(raw: bytes, own_topics: frozenset[str]) -> None:
    check_reply_to(raw, own_topics)


@FUZZ
@given(TOPIC_NAMES | TOPIC_EDGES, OWN_TOPICS, st.booleans())
def test_reply_to_keeps_every_topic_name_not_ours(
    topic: str, own_topics: frozenset[str], ours: bool
) -> None:
    own = own_topics | {topic} if ours else own_topics
    kept = check_reply_to(topic.encode(), own)
    legal = TOPIC.fullmatch(topic) is not None and topic not in (".", "..")
    assert isinstance(kept, Refused) == (ours or topic in own_topics or not legal)


@FUZZ
@given(st.binary(max_size=300) | st.sampled_from([0, 1, 255, 256, 257]).map(b"c".__mul__))
def test_correlation_id_is_kept_byte_for_byte_up_to_its_limit(raw: bytes) -> None:
    kept = headers.correlation_id(raw)
    if not refused(kept, "correlation_id"):
        assert kept == raw
        assert 1 <= len(raw) <= headers.CORRELATION_ID_MAX_BYTES
    else:
        assert not 1 <= len(raw) <= headers.CORRELATION_ID_MAX_BYTES


def check_traceparent(raw: bytes) -> str | Refused:
    kept = headers.traceparent(raw)
    if not refused(kept, "traceparent"):
        assert isinstance(kept, str)
        assert kept.encode() == raw
        assert len(kept) <= 512
        match = W3C_TRACEPARENT.fullmatch(kept)
        assert match is not None, kept
        assert match[1] != "00" or len(kept) == 55, kept
    return kept


@FUZZ
@given(ANY_BYTES)
def test_traceparent_of_any_bytes(raw: bytes) -> None:
    check_traceparent(raw)


NONZERO_TRACE = hex_digits(32).filter(lambda h: h != "0" * 32)
NONZERO_SPAN = hex_digits(16).filter(lambda h: h != "0" * 16)
# A valid traceparent's parts (version, trace id, span id, flags, separator, what follows
# the flags), and for each, values that break it or sit at the edge of what is valid.
VALID_PARTS = st.tuples(
    st.sampled_from(["00", "01", "cc", "fe"]),
    NONZERO_TRACE,
    NONZERO_SPAN,
    hex_digits(2),
    st.just("-"),
    st.just(""),
)
EDGES = [
    ["ff", "0", "000", "0A", "zz", "-0"],
    ["0" * 32, "A" * 32, "a" * 31, "a" * 33, ""],
    ["0" * 16, "B" * 16, "b" * 15, "b" * 17],
    ["1", "001", "0g", "FF"],
    ["_", "", "--", " "],
    ["-", "-x", "x", "0", "-\x00", "-\u00e9", " ", "\n"],
]


@st.composite
def near_valid_traceparents(draw: st.DrawFn) -> bytes:
    parts: list[str] = list(draw(VALID_PARTS))
    which = draw(st.integers(0, len(parts) - 1))
    parts[which] = draw(st.sampled_from(EDGES[which]) | st.text(max_size=40))
    version, trace_id, span_id, flags, separator, rest = parts
    return (separator.join((version, trace_id, span_id, flags)) + rest).encode()


@FUZZ
@given(near_valid_traceparents())
@example(b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
@example(b"00-00000000000000000000000000000000-b7ad6b7169203331-01")
@example(b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01")
@example(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-")
@example(b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x")
@example("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-\u00e9".encode())
def test_traceparent_of_near_valid_values(raw: bytes) -> None:
    check_traceparent(raw)


@FUZZ
@given(NONZERO_TRACE, NONZERO_SPAN, hex_digits(2))
def test_every_valid_version_00_traceparent_is_kept(trace: str, span: str, flags: str) -> None:
    value = f"00-{trace}-{span}-{flags}"
    assert check_traceparent(value.encode()) == value


@FUZZ
@given(
    hex_digits(2).filter(lambda v: v not in ("00", "ff")),
    NONZERO_TRACE,
    NONZERO_SPAN,
    hex_digits(2),
    st.none() | st.from_regex(r"-[!-~]{0,100}", fullmatch=True),
)
def test_every_valid_later_version_traceparent_is_kept(
    version: str, trace: str, span: str, flags: str, rest: str | None
) -> None:
    value = f"{version}-{trace}-{span}-{flags}{rest or ''}"
    assert check_traceparent(value.encode()) == value


@pytest.mark.parametrize("rest", ["-\x00", "-\x1b]0;title\x07"])
def test_a_kept_traceparent_holds_only_visible_characters(rest: str) -> None:
    raw = f"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01{rest}".encode()
    kept = headers.traceparent(raw)
    assert isinstance(kept, Refused) or all(" " <= c <= "~" for c in kept)


def check_tracestate(raw: bytes) -> str | Refused:
    kept = headers.tracestate(raw)
    if not refused(kept, "tracestate"):
        assert isinstance(kept, str)
        assert kept.encode() == raw
        assert len(kept) <= headers.TRACESTATE_MAX
        members = [m.strip(" \t") for m in kept.split(",")]
        members = [m for m in members if m]
        assert 1 <= len(members) <= 32
        keys = [m.partition("=")[0] for m in members]
        assert len(set(keys)) == len(keys)
        for member in members:
            key, _, value = member.partition("=")
            assert TRACESTATE_KEY.fullmatch(key), member
            assert TRACESTATE_VALUE.fullmatch(value), member
    return kept


@FUZZ
@given(ANY_BYTES)
@example(b"a=b=c")
@example(b"a=b,c")
@example(b"a=\xe9")
@example(b"A=b")
@example(b"a= ")
def test_tracestate_of_any_bytes(raw: bytes) -> None:
    check_tracestate(raw)


# Keys and values of the W3C forms, shorter: the limits have a test of their own.
_LCALPHA = string.ascii_lowercase
_KEY_CHARS = _LCALPHA + string.digits + "_-*/"
_VALUE_END = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ",=")
SIMPLE_KEYS = st.builds(str.__add__, st.sampled_from(_LCALPHA), st.text(_KEY_CHARS, max_size=8))
TENANT_KEYS = st.builds(
    "{}{}@{}".format,
    st.sampled_from(_LCALPHA + string.digits),
    st.text(_KEY_CHARS, max_size=4),
    SIMPLE_KEYS,
)
VALUES = st.builds(str.__add__, st.text(" " + _VALUE_END, max_size=8), st.sampled_from(_VALUE_END))
MEMBERS = st.dictionaries(SIMPLE_KEYS | TENANT_KEYS, VALUES, min_size=1, max_size=32)


@FUZZ
@given(MEMBERS, st.sampled_from([",", ", ", " ,\t", ",,"]))
def test_every_valid_tracestate_is_kept(members: dict[str, str], separator: str) -> None:
    value = separator.join(f"{key}={state}" for key, state in members.items())
    kept = check_tracestate(value.encode())
    assert (kept == value) == (len(value) <= headers.TRACESTATE_MAX)


@FUZZ
@given(
    MEMBERS,
    st.text(st.sampled_from(",= \t@A\x00") | st.characters(), max_size=5),
    st.integers(0, 31),
)
def test_tracestate_of_near_valid_values(members: dict[str, str], noise: str, at: int) -> None:
    value = ",".join(f"{key}={state}" for key, state in members.items())
    at = min(at, len(value))
    check_tracestate((value[:at] + noise + value[at:]).encode(errors="surrogatepass"))


def test_tracestate_at_its_limits() -> None:
    longest_key = "k" * 256
    assert headers.tracestate(f"{longest_key}=v".encode()) == f"{longest_key}=v"
    assert isinstance(headers.tracestate(f"{longest_key}k=v".encode()), Refused)
    tenant = f"{'t' * 241}@{'s' * 14}=v"
    assert headers.tracestate(tenant.encode()) == tenant
    longest_value = "a=" + "v" * 256
    assert headers.tracestate(longest_value.encode()) == longest_value
    assert isinstance(headers.tracestate(longest_value.encode() + b"v"), Refused)
    members = ",".join(f"k{i}=v" for i in range(32))
    assert headers.tracestate(members.encode()) == members
    assert isinstance(headers.tracestate(members.encode() + b",k32=v"), Refused)
    assert isinstance(headers.tracestate(b"a=1,a=2"), Refused)
    assert isinstance(headers.tracestate(("a=" + "v" * 255 + ",b=" + "v" * 255).encode()), Refused)
