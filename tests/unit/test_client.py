"""The Python client without Kafka: the commands it writes are what the service reads, and
its feed's sequencer hands over each change once, in version order."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from customer_groups_client import (
    AddCustomers,
    CreateGroup,
    DeleteGroup,
    GroupView,
    Rejected,
    RemoveCustomers,
    Result,
    UpdateGroup,
)
from customer_groups_client.feed import Change, Sequencer
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from service.domain import commands as service_commands
from service.parsing import Invalid, parse_command

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def schema_of(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        json.loads((SCHEMAS / f"command.{kind}.schema.json").read_text())
    )


COMMANDS = [
    CreateGroup(organization_id="org_a", name="VIP", description="Big", platform_id="42"),
    CreateGroup(organization_id="org_a", name="VIP", group_id="grp_chosen"),
    UpdateGroup(organization_id="org_a", group_id="grp_1", name="VIPs", expected_version=2),
    UpdateGroup(organization_id="org_a", group_id="grp_1", description=None),
    DeleteGroup(organization_id="org_a", group_id="grp_1", expected_version=3),
    AddCustomers(organization_id="org_a", group_id="grp_1", customer_ids=["c1", "c 2"]),
    RemoveCustomers(organization_id="org_a", group_id="grp_1", customer_ids=["c1"]),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.type)
def test_each_command_is_valid_by_the_committed_schema_and_the_service_reads_it(
    command: Any,
) -> None:
    body = json.loads(command.body())
    assert not list(schema_of(command.type).iter_errors(body))
    parsed = parse_command(command.body(), 1024 * 1024)
    assert not isinstance(parsed, Invalid), parsed
    assert parsed.command_id == command.command_id


def test_an_update_sends_null_only_for_what_it_clears() -> None:
    clears = json.loads(UpdateGroup(organization_id="o", group_id="grp_1", description=None).body())
    assert clears["description"] is None
    assert "name" not in clears
    assert "platform_id" not in clears
    renames = json.loads(UpdateGroup(organization_id="o", group_id="grp_1", name="N").body())
    assert set(renames) == {"command_id", "type", "organization_id", "group_id", "name"}


def test_each_command_gets_its_own_id_unless_given_one() -> None:
    first, second = (CreateGroup(organization_id="o", name="N") for _ in range(2))
    assert first.command_id != second.command_id
    assert CreateGroup(organization_id="o", name="N", command_id="c-1").command_id == "c-1"


@pytest.mark.parametrize(
    ("fields", "wrong"),
    [
        ({"organization_id": "org a"}, "organization_id"),
        ({"organization_id": "o" * 65}, "organization_id"),
        ({"group_id": "group_1"}, "group_id"),
        ({"customer_ids": []}, "customer_ids"),
        ({"customer_ids": ["c"] * 1001}, "customer_ids"),
        ({"command_id": ""}, "command_id"),
        ({"expected_version": 0}, "expected_version"),
    ],
)
def test_a_command_that_could_never_be_read_fails_before_it_is_sent(
    fields: dict[str, Any], wrong: str
) -> None:
    values = {"organization_id": "o", "group_id": "grp_1", "customer_ids": ["c"], **fields}
    with pytest.raises(ValidationError, match=wrong):
        AddCustomers(**values)


@given(st.text(max_size=130))
def test_the_client_takes_a_customer_id_exactly_when_the_service_does(customer_id: str) -> None:
    service_takes = service_commands.customer_id_problem(customer_id) is None
    try:
        AddCustomers(organization_id="o", group_id="grp_1", customer_ids=[customer_id])
    except ValidationError:
        client_takes = False
    else:
        client_takes = True
    assert client_takes == service_takes


def test_a_rejection_raises_with_the_linkit_error_body() -> None:
    result = Result.model_validate_json(
        b'{"command_id": "c", "status": "rejected", "code": 409, "error": "Version conflict",'
        b' "details": {"expected_version": 3, "current_version": 4}, "group": null,'
        b' "a_field_of_a_later_contract": 1}'
    )
    assert not result.accepted
    with pytest.raises(Rejected) as rejected:
        result.accepted_group()
    assert (rejected.value.code, rejected.value.error) == (409, "Version conflict")
    assert rejected.value.details == {"expected_version": 3, "current_version": 4}


def group(group_id: str, version: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": group_id,
        "organization_id": "org_a",
        "name": f"{group_id} v{version}",
        "description": None,
        "platform_id": None,
        "customer_count": 0,
        "version": version,
        "created_at": "2026-12-01T10:00:00.000000Z",
        "updated_at": "2026-12-01T10:00:00.000000Z",
        "deleted_at": None,
        **fields,
    }


@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    offset: int = 0


def event(kind: str, value: dict[str, Any], event_id: str | None = None) -> Record:
    version = value["version"]
    return Record(
        value["id"].encode(),
        json.dumps(value).encode(),
        [
            ("ce_id", (event_id or f"{value['id']}-{version}").encode()),
            ("ce_type", kind.encode()),
            ("ce_groupversion", str(version).encode()),
        ],
    )


def state(group_id: str, version: int, value: dict[str, Any] | None) -> Record:
    body = None if value is None else json.dumps(value).encode()
    return Record(group_id.encode(), body, [("ce_groupversion", str(version).encode())])


def test_duplicates_and_stale_versions_give_no_change() -> None:
    sequencer = Sequencer()
    created = event("group.created", group("grp_1", 1))
    updated = event("group.updated", group("grp_1", 2, previous={"name": "x"}))
    changes = [sequencer.event(r) for r in (created, updated, created, updated)]
    assert [c.version if c else None for c in changes] == [1, 2, None, None]
    first = changes[0]
    assert first is not None
    assert (first.kind, first.event_id) == ("group.created", "grp_1-1")
    assert changes[1] is not None
    assert changes[1].previous == {"name": "x"}


def test_a_snapshot_then_the_events_it_already_holds_then_newer_ones() -> None:
    sequencer = Sequencer()
    snapshot = sequencer.state(state("grp_1", 3, group("grp_1", 3, customer_count=2)))
    assert snapshot is not None
    assert (snapshot.kind, snapshot.version) == ("snapshot", 3)
    for version in (1, 2, 3):
        assert sequencer.event(event("group.updated", group("grp_1", version))) is None
    added = sequencer.event(
        event("group.customers_added", group("grp_1", 4, customer_ids=["c3"], customer_count=3))
    )
    assert added is not None
    assert (added.version, added.customer_ids) == (4, ["c3"])


def test_a_deleted_group_never_changes_again() -> None:
    sequencer = Sequencer()
    assert sequencer.event(event("group.created", group("grp_1", 1))) is not None
    deleted = sequencer.event(
        event("group.deleted", group("grp_1", 2, deleted_at="2026-12-01T11:00:00Z"))
    )
    assert deleted is not None
    assert deleted.ends_group
    assert sequencer.event(event("group.updated", group("grp_1", 3))) is None
    assert sequencer.state(state("grp_1", 1, group("grp_1", 1))) is None


def test_a_tombstone_ends_a_known_group_and_is_dropped_for_an_unknown_one() -> None:
    sequencer = Sequencer({"grp_known": 2})
    ended = sequencer.state(state("grp_known", 3, None))
    assert ended is not None
    assert (ended.kind, ended.group) == ("tombstone", None)
    assert sequencer.state(state("grp_never_seen", 5, None)) is None
    assert sequencer.event(event("group.created", group("grp_never_seen", 1))) is None


def test_known_versions_are_not_handed_over_again() -> None:
    sequencer = Sequencer({"grp_1": 5})
    assert sequencer.event(event("group.updated", group("grp_1", 5))) is None
    assert sequencer.event(event("group.updated", group("grp_1", 6))) is not None


@pytest.mark.parametrize(
    "record",
    [
        Record(None, b"{}", [("ce_type", b"group.created"), ("ce_groupversion", b"1")]),
        Record(b"grp_1", b"{}", [("ce_type", b"group.created"), ("ce_groupversion", b"x")]),
        Record(b"grp_1", json.dumps(group("grp_1", 1)).encode(), [("ce_groupversion", b"1")]),
        Record(b"grp_1", b"not json", [("ce_type", b"group.created"), ("ce_groupversion", b"1")]),
        Record(b"grp_1", None, [("ce_type", b"group.created"), ("ce_groupversion", b"1")]),
    ],
)
def test_a_record_outside_the_contract_is_counted_and_skipped(record: Record) -> None:
    sequencer = Sequencer()
    assert sequencer.event(record) is None
    assert sequencer.skipped == 1


def test_the_view_keeps_members_where_it_can_know_them() -> None:
    view = GroupView(members_kept=True)
    sequencer = Sequencer()
    records = [
        event("group.created", group("grp_new", 1)),
        event("group.customers_added", group("grp_new", 2, customer_ids=["a", "b"])),
        event("group.customers_removed", group("grp_new", 3, customer_ids=["a"])),
    ]
    for change in [sequencer.event(r) for r in records]:
        assert change is not None
        view.apply(change)
    for snapshot in (
        sequencer.state(state("grp_full", 4, group("grp_full", 4, customer_count=9))),
        sequencer.state(state("grp_empty", 2, group("grp_empty", 2))),
    ):
        assert snapshot is not None
        view.apply(snapshot)
    assert view.members == {"grp_new": {"b"}, "grp_full": None, "grp_empty": set()}
    assert {g: v.version for g, v in view.groups.items()} == {
        "grp_new": 3,
        "grp_full": 4,
        "grp_empty": 2,
    }
    view.apply(Change("tombstone", "grp_full", 5, None))
    assert "grp_full" not in view.groups
    assert "grp_full" not in view.members


def test_the_view_forgets_members_after_a_version_it_did_not_see() -> None:
    view = GroupView(members_kept=True)
    sequencer = Sequencer()
    snapshot = sequencer.state(state("grp_1", 1, group("grp_1", 1)))
    added = sequencer.event(
        event("group.customers_added", group("grp_1", 3, customer_ids=["b"], customer_count=2))
    )
    assert snapshot is not None
    assert added is not None
    view.apply(snapshot)
    assert view.members == {"grp_1": set()}
    view.apply(added)
    assert view.members == {"grp_1": None}  # version 2 may have added someone else
