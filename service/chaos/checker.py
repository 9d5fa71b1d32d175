"""What a chaos run left behind, checked: every command answered once with one outcome, every
effect applied once, every group's events complete and in version order, nothing invented,
the state topic equal to the database. A pure function of what was read back, so that it can
be tested with made-up input."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

# The figures that must be zero for a run to pass.
MUST_BE_ZERO = (
    "commands_without_result",
    "commands_dead_lettered",
    "faults_failed",
    "commands_with_two_outcomes",
    "effects_applied_twice",
    "version_gaps",
    "versions_out_of_order",
    "events_without_command",
    "state_not_database",
    "groups_not_as_answered",
)


@dataclass(frozen=True)
class Message:
    """A record read back: its key, value, headers and Kafka timestamp (ms)."""

    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int


@dataclass(frozen=True)
class StoredGroup:
    version: int
    deleted: bool


@dataclass
class ReadBack:
    sent_at_ms: dict[str, int]
    results: list[Message]
    events: list[Message]
    state: list[Message]
    groups: dict[str, StoredGroup]
    # (group id, command id) → outbox rows
    outbox_rows: dict[tuple[str, str], int]
    faults: list[dict[str, Any]] = field(default_factory=list)
    # The command ids on the commands topic; those in dead letters, with the letter's error.
    in_topic: set[str] = field(default_factory=set)
    dead_lettered: dict[str, str] = field(default_factory=dict)


def _outcome(result: dict[str, Any]) -> tuple[Any, ...]:
    group = result.get("group") or {}
    return (result["status"], result["code"], group.get("version"), result.get("error"))


def check(read: ReadBack) -> dict[str, Any]:
    report: dict[str, Any] = {"commands_sent": len(read.sent_at_ms)}
    outcomes: dict[str, set[tuple[Any, ...]]] = defaultdict(set)
    answered_at: dict[str, int] = {}
    versions_by_group: dict[str, list[int]] = defaultdict(list)
    for message in read.results:
        result = orjson.loads(message.value or b"{}")
        command_id = result["command_id"]
        outcome = _outcome(result)
        group = result.get("group")
        if result["status"] == "accepted" and group is not None and not outcomes[command_id]:
            versions_by_group[group["id"]].append(group["version"])
        outcomes[command_id].add(outcome)
        answered_at.setdefault(command_id, message.timestamp_ms)
    missing = set(read.sent_at_ms) - set(outcomes)
    report["commands_without_result"] = len(missing)
    # Which side lost them: never on the commands topic (the load's sends), or there.
    report["without_result_not_in_topic"] = len(missing - read.in_topic)
    report["without_result_ids"] = sorted(missing)[:20]
    ours = {c: e for c, e in read.dead_lettered.items() if c in read.sent_at_ms}
    report["commands_dead_lettered"] = len(ours)
    report["dead_letter_errors"] = sorted(set(ours.values()))[:10]
    report["faults_failed"] = sum("failed" in fault for fault in read.faults)
    report["commands_with_two_outcomes"] = sum(len(o) > 1 for o in outcomes.values())
    report["results_not_sent_by_us"] = len(set(outcomes) - set(read.sent_at_ms))
    report["effects_applied_twice"] = sum(rows > 1 for rows in read.outbox_rows.values())
    # Each command that changed a group answered with the version it made: together they
    # are 1..N for a group at version N, or an effect was lost, doubled or invented.
    report["groups_not_as_answered"] = sum(
        sorted(set(versions_by_group.get(group_id, []))) != list(range(1, stored.version + 1))
        for group_id, stored in read.groups.items()
    )
    report.update(_events(read, read.events))
    report["state_not_database"] = _state(read.state, read.groups)
    report["faults"] = [_recovery(fault, read, answered_at) for fault in read.faults]
    report["passed"] = all(report[name] == 0 for name in MUST_BE_ZERO)
    return report


def _events(read: ReadBack, events: Iterable[Message]) -> dict[str, int]:
    seen: dict[str, dict[int, str]] = defaultdict(dict)
    highest: dict[str, int] = defaultdict(int)
    duplicates = out_of_order = invented = 0
    for event in events:
        group_id = (event.key or b"").decode()
        version = int(event.headers["ce_groupversion"])
        event_id = event.headers["ce_id"].decode()
        if event.headers["ce_commandid"].decode() not in read.sent_at_ms:
            invented += 1
        if version in seen[group_id]:
            if seen[group_id][version] == event_id:
                duplicates += 1  # re-published with its id: allowed, counted
            else:
                out_of_order += 1  # two different events claim one version
            continue
        if version < highest[group_id]:
            out_of_order += 1
        seen[group_id][version] = event_id
        highest[group_id] = max(highest[group_id], version)
    gaps = 0
    for group_id, stored in read.groups.items():
        gaps += len(set(range(1, stored.version + 1)) - set(seen.get(group_id, {})))
    return {
        "events": sum(len(v) for v in seen.values()),
        "republished_duplicates": duplicates,
        "version_gaps": gaps,
        "versions_out_of_order": out_of_order,
        "events_without_command": invented,
    }


def _state(state: Iterable[Message], groups: dict[str, StoredGroup]) -> int:
    """The topic's last record per group, as a compacted reader keeps it, against the row."""
    last: dict[str, Message] = {}
    for message in state:
        last[(message.key or b"").decode()] = message
    wrong = 0
    for group_id, stored in groups.items():
        final = last.get(group_id)
        if final is None:
            wrong += 1
        elif final.value is None:
            wrong += not stored.deleted
        else:
            wrong += stored.deleted or orjson.loads(final.value)["version"] != stored.version
    return wrong


def _recovery(fault: dict[str, Any], read: ReadBack, answered_at: dict[str, int]) -> dict[str, Any]:
    """How long after the fault the commands sent in its first second were answered, and
    their events published: until then, results or events were not flowing."""
    at = fault["at_ms"]
    window = [c for c, sent in read.sent_at_ms.items() if at <= sent < at + 1000]
    commands = set(window)
    results = [answered_at[c] for c in window if c in answered_at]
    events = [e.timestamp_ms for e in read.events if e.headers["ce_commandid"].decode() in commands]
    return {
        **fault,
        "results_again_s": round((max(results) - at) / 1000, 2) if results else None,
        "events_again_s": round((max(events) - at) / 1000, 2) if events else None,
    }
