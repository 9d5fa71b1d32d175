"""Kafka records as commands: the value parsed and validated, the headers the service
copies checked.

Two kinds of failure are told apart: a record that breaks the wire schema is malformed and
goes to the dead-letter topic; a well-formed command that breaks a business rule gets a 422."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from service.adapters.kafka import Record
from service.domain import headers
from service.domain.commands import (
    RULE_ERROR,
    Command,
    valid_command_id,
    valid_organization_id,
)
from service.domain.ports import AnyCommand

_COMMAND: TypeAdapter[AnyCommand] = TypeAdapter(Command)


# A result must stay small whatever the input: thousands of unknown fields, or one with a
# huge name, would otherwise make a 422 larger than Kafka accepts, and it could never be sent.
_PROBLEMS_SHOWN = 10


_PROBLEM_CHARS = 200


@dataclass(frozen=True, slots=True)
class Invalid:
    reason: str
    details: str
    malformed: bool
    command_id: str | None = None
    organization_id: str | None = None


def parse_command(value: bytes | None, max_bytes: int) -> AnyCommand | Invalid:
    """A command, or why not; `malformed` ones break the wire schema and are dead-lettered."""
    if not value:
        return Invalid("empty", "The message has no value", malformed=True)
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return Invalid("not_json", "The message is not valid JSON", malformed=True)
    if not isinstance(data, dict):
        return Invalid("not_object", "The message is not a JSON object", malformed=True)
    command_id, organization_id = data.get("command_id"), data.get("organization_id")
    ids: dict[str, Any] = {}
    if valid_command_id(command_id) and valid_organization_id(organization_id):
        ids = {"command_id": command_id, "organization_id": organization_id}
    if len(value) > max_bytes:
        return Invalid("too_large", f"The message is larger than {max_bytes} bytes", True, **ids)
    try:
        return _COMMAND.validate_python(data)
    except ValidationError as error:
        problems = error.errors(include_url=False, include_input=False)
        malformed = any(p["type"] != RULE_ERROR for p in problems)
        return Invalid(
            "invalid_schema" if malformed else "validation",
            "; ".join(_describe(p)[:_PROBLEM_CHARS] for p in problems[:_PROBLEMS_SHOWN]),
            malformed,
            **ids,
        )


def _describe(problem: Any) -> str:
    if problem["type"] == RULE_ERROR:
        return str(problem["msg"])
    where = ".".join(str(part) for part in problem["loc"] if not str(part).startswith("group."))
    return f"{where}: {problem['msg']}" if where else str(problem["msg"])


@dataclass(frozen=True, slots=True)
class WireHeaders:
    """The headers the service copies onto what it sends, each checked (domain.headers)."""

    reply_to: str | None = None
    correlation_id: bytes | None = None
    traceparent: str | None = None


_CHECKS: dict[str, Callable[[bytes, frozenset[str]], str | bytes | headers.Refused]] = {
    "reply_to": headers.reply_to,
    "correlation_id": lambda raw, _: headers.correlation_id(raw),
    "traceparent": lambda raw, _: headers.traceparent(raw),
}


def read_headers(
    record: Record, own_topics: frozenset[str], refused: Callable[[headers.Refused], None]
) -> WireHeaders:
    """The first value of each header the service copies; one that breaks its rule is left
    out (and reported), so it never changes the command's outcome."""
    kept: dict[str, Any] = {}
    for key, value in record.headers:
        check = _CHECKS.get(key)
        if check is None or key in kept or value is None:
            continue
        checked = check(bytes(value), own_topics)
        if isinstance(checked, headers.Refused):
            refused(checked)
            kept[key] = None
        else:
            kept[key] = checked
    return WireHeaders(**kept) if kept else _NO_HEADERS


_NO_HEADERS = WireHeaders()
