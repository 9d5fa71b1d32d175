"""The command parser against whatever a producer may send: it answers, and never raises."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.domain.commands import (
    ORGANIZATION_ID,
    CreateGroup,
    DeleteGroup,
    UpdateGroup,
    valid_command_id,
    valid_organization_id,
)
from service.parsing import Invalid, parse_command

MAX = 1024 * 1024
REASONS = {"empty", "not_json", "not_object", "too_large", "invalid_schema", "validation"}
# consumer.py shows at most 10 problems of at most 200 characters each, joined by "; ".
DETAILS_MAX = 10 * 200 + 9 * len("; ")

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every code point, lone surrogates too: json.dumps writes those as "\ud800" escapes.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
CONTROLS = st.text(st.characters(max_codepoint=0x9F), min_size=1, max_size=20)
HUGE_TEXT = st.integers(200, 200_000).map(lambda n: "x" * n)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | ANY_TEXT
    | CONTROLS
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=10,
)
FIELDS = ["command_id", "organization_id", "type", "group_id", "name", "description"]
FIELDS += ["platform_id", "expected_version"]


def encoded(data: Any) -> bytes:
    """JSON as a producer may write it: ASCII with escapes (lone surrogates as "\\ud800"),
    or UTF-8, which cannot hold a lone surrogate."""
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        return json.dumps(data).encode()


def checked(value: bytes | None, max_bytes: int = MAX) -> Any:
    parsed = parse_command(value, max_bytes)
    if isinstance(parsed, Invalid):
        assert parsed.reason in REASONS
        assert parsed.malformed == (parsed.reason != "validation")
        assert len(parsed.details) <= DETAILS_MAX
        assert parsed.details.encode()
        if parsed.command_id is not None or parsed.organization_id is not None:
            assert valid_command_id(parsed.command_id)
            assert valid_organization_id(parsed.organization_id)
    else:
        assert isinstance(parsed, CreateGroup | UpdateGroup | DeleteGroup)
        assert value is not None
        assert len(value) <= max_bytes
        assert ORGANIZATION_ID.fullmatch(parsed.organization_id)
        # What the service stores and sends of it must encode.
        orjson.dumps(parsed.model_dump(mode="json"))
        parsed.fingerprint()
    return parsed


@FUZZ
@given(st.none() | st.binary(max_size=2000), st.integers(0, 4000))
def test_any_bytes(value: bytes | None, max_bytes: int) -> None:
    checked(value, max_bytes)


@FUZZ
@given(JSON_VALUES)
def test_any_json(data: Any) -> None:
    checked(encoded(data))


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS) | ANY_TEXT, SCALARS | JSON_VALUES, max_size=8))
def test_any_json_object_with_command_fields(data: dict[str, Any]) -> None:
    checked(encoded(data))


NOT_NUL = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")


@st.composite
def valid_commands(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["group.create", "group.update", "group.delete"]))
    command: dict[str, Any] = {
        "command_id": draw(st.text(NOT_NUL, min_size=1, max_size=128)),
        "organization_id": draw(st.from_regex(ORGANIZATION_ID, fullmatch=True)),
        "type": kind,
    }
    if kind != "group.create" or draw(st.booleans()):
        command["group_id"] = draw(st.from_regex(r"grp_[A-Za-z0-9_-]{1,60}", fullmatch=True))
    if kind != "group.delete":
        command["name"] = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 ]{0,98}", fullmatch=True))
        if draw(st.booleans()):
            command["description"] = draw(st.text(NOT_NUL, max_size=500))
        if draw(st.booleans()):
            command["platform_id"] = draw(st.text(NOT_NUL, max_size=255))
    if draw(st.booleans()):
        command["expected_version"] = draw(st.integers(1, 2**31 - 1))
    return command


@FUZZ
@given(valid_commands())
def test_valid_commands_are_commands(command: dict[str, Any]) -> None:
    assert not isinstance(checked(encoded(command)), Invalid)


MUTATIONS = (
    ANY_TEXT
    | CONTROLS
    | HUGE_TEXT
    | st.sampled_from(["\ud800", "\udfff", "a\ud83d", "\x00", "\x1b[2J", "\u202e", " ", ""])
    | st.sampled_from([None, True, 0, -1, 2**63, 2**64, 1.5, [], {}, ["x"], {"a": 1}])
)


@FUZZ
@given(
    valid_commands(),
    st.sampled_from(FIELDS) | ANY_TEXT | HUGE_TEXT,
    MUTATIONS,
    st.sampled_from([MAX, 512]),
)
def test_near_valid_commands(
    command: dict[str, Any], field: str, value: Any, max_bytes: int
) -> None:
    checked(encoded({**command, field: value}), max_bytes)


@FUZZ
@given(valid_commands(), st.sampled_from(FIELDS))
def test_commands_with_a_field_left_out(command: dict[str, Any], field: str) -> None:
    command.pop(field, None)
    checked(encoded(command))


def test_a_lone_surrogate_is_not_json_and_keeps_no_ids() -> None:
    value = json.dumps(
        {"command_id": "c-1", "organization_id": "org_a", "type": "group.create", "name": "\ud800"}
    ).encode()
    assert b"\\ud800" in value
    parsed = checked(value)
    assert isinstance(parsed, Invalid)
    assert (parsed.reason, parsed.malformed, parsed.command_id) == ("not_json", True, None)


def test_details_of_many_huge_problems_stay_bounded() -> None:
    command = {"command_id": "c-1", "organization_id": "org_a", "type": "group.create"}
    extra = {f"{i}" + "k" * 5000: "v" for i in range(50)}
    parsed = checked(encoded({**command, "name": "x" * 5000, **extra}))
    assert isinstance(parsed, Invalid)
    assert parsed.command_id == "c-1"
    assert 9 * 200 < len(parsed.details) <= DETAILS_MAX
