"""The chaos checker finds each kind of damage in what it reads back, and passes a clean run."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from service.chaos.checker import Message, ReadBack, StoredGroup, check
from service.chaos.options import ChaosOptions


def result(command_id: str, group: str, version: int, status: str = "accepted") -> Message:
    body: dict[str, Any] = {"command_id": command_id, "status": status, "code": 200}
    body["group"] = {"id": group, "version": version} if status == "accepted" else None
    return Message(b"org", orjson.dumps(body), {}, 1_000)


def event(group: str, version: int, command_id: str, event_id: str | None = None) -> Message:
    headers = {
        "ce_groupversion": str(version).encode(),
        "ce_id": (event_id or f"ev-{group}-{version}").encode(),
        "ce_commandid": command_id.encode(),
    }
    return Message(group.encode(), b"{}", headers, 2_000)


def state(group: str, version: int | None) -> Message:
    value = None if version is None else orjson.dumps({"version": version})
    return Message(group.encode(), value, {}, 3_000)


def clean() -> ReadBack:
    """Two commands on one group: created (1), updated (2)."""
    return ReadBack(
        sent_at_ms={"c1": 0, "c2": 10},
        in_topic={"c1", "c2"},
        results=[result("c1", "g", 1), result("c2", "g", 2)],
        events=[event("g", 1, "c1"), event("g", 2, "c2")],
        state=[state("g", 1), state("g", 2)],
        groups={"g": StoredGroup(2, deleted=False)},
        outbox_rows={("g", "c1"): 1, ("g", "c2"): 1},
    )


def test_a_clean_run_passes_with_every_figure_zero() -> None:
    report = check(clean())
    assert report["passed"] is True
    assert report["without_result_ids"] == []
    assert report["commands_sent"] == 2
    assert report["events"] == 2


def test_a_re_published_event_with_its_own_id_is_counted_not_failed() -> None:
    read = clean()
    read.events.append(event("g", 1, "c1"))
    report = check(read)
    assert report["passed"] is True
    assert report["republished_duplicates"] == 1


@pytest.mark.parametrize(
    ("damage", "figure"),
    [
        (lambda r: r.results.pop(), "commands_without_result"),
        (lambda r: r.results.append(result("c2", "g", 3)), "commands_with_two_outcomes"),
        (lambda r: r.outbox_rows.update({("g", "c2"): 2}), "effects_applied_twice"),
        (lambda r: r.events.pop(0), "version_gaps"),
        (lambda r: r.events.reverse(), "versions_out_of_order"),
        (lambda r: r.events.append(event("g", 2, "c2", "another-id")), "versions_out_of_order"),
        (lambda r: r.events.append(event("g", 3, "nobody")), "events_without_command"),
        (lambda r: r.state.pop(), "state_not_database"),
        (lambda r: r.state.append(state("g", None)), "state_not_database"),
        (lambda r: r.groups.update({"g": StoredGroup(3, deleted=False)}), "groups_not_as_answered"),
        (lambda r: r.dead_lettered.update(c1="Boom()"), "commands_dead_lettered"),
        (lambda r: r.faults.append({"kind": "kill", "at_ms": 0, "failed": "no"}), "faults_failed"),
    ],
    ids=[
        "no result",
        "two outcomes",
        "applied twice",
        "missing event",
        "reordered events",
        "two events for one version",
        "invented event",
        "state behind",
        "state tombstone for a live group",
        "database ahead of the answers",
        "dead-lettered",
        "a fault not injected",
    ],
)
def test_each_kind_of_damage_is_found_and_fails_the_run(damage: Any, figure: str) -> None:
    read = clean()
    damage(read)
    report = check(read)
    assert report[figure] >= 1
    assert report["passed"] is False


def test_a_fault_s_recovery_is_when_the_commands_sent_in_its_first_second_were_done() -> None:
    read = clean()
    read.faults = [{"kind": "kill", "at_ms": 0}]
    [fault] = check(read)["faults"]
    # c1 and c2 were sent in the fault's first second; their results came at 1 s, events at 2 s.
    assert (fault["results_again_s"], fault["events_again_s"]) == (1.0, 2.0)


def test_the_schedule_has_each_kind_as_often_as_asked_inside_the_run_and_is_seeded() -> None:
    options = ChaosOptions(seconds=600, faults=("kill", "pause_relay"), each=2, seed=3)
    schedule = options.schedule()
    assert sorted(kind for _, kind in schedule) == ["kill", "kill", "pause_relay", "pause_relay"]
    times = [at for at, _ in schedule]
    assert times == sorted(times)
    assert times[0] >= 60 and times[-1] <= 480
    assert (
        schedule
        == ChaosOptions(seconds=600, faults=("kill", "pause_relay"), each=2, seed=3).schedule()
    )
    assert (
        schedule
        != ChaosOptions(seconds=600, faults=("kill", "pause_relay"), each=2, seed=4).schedule()
    )
