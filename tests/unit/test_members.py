"""Customers in groups (contract v1.1): the commands' rules, with the store faked."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import TypeAdapter, ValidationError

from service.domain.commands import RULE_ERROR, Command
from service.domain.events import CustomersAdded, CustomersRemoved, GroupDeleted
from service.domain.ports import AnyCommand
from service.domain.results import CommandResult
from service.handlers import Incoming, apply_commands
from service.lanes import by_weight
from service.parsing import Invalid, parse_command
from tests.unit.fakes import (
    OTHER_ORG,
    Clock,
    FakeCommandStore,
    add_customers,
    create,
    delete,
    remove_customers,
)

COMMAND: TypeAdapter[AnyCommand] = TypeAdapter(Command)


@pytest.fixture
def store() -> FakeCommandStore:
    return FakeCommandStore()


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def apply(
    store: FakeCommandStore, clock: Clock, *commands: AnyCommand
) -> list[CommandResult]:
    return await apply_commands(store, [Incoming(c) for c in commands], clock)


async def group(store: FakeCommandStore, clock: Clock, name: str = "VIP") -> str:
    [result] = await apply(store, clock, create(name))
    assert result.group is not None
    return str(result.group["id"])


async def test_add_skips_members_counts_each_id_once_and_emits_exactly_what_changed(
    store: FakeCommandStore, clock: Clock
) -> None:
    gid = await group(store, clock)
    [first] = await apply(store, clock, add_customers(gid, "c1", "c2"))
    [second] = await apply(store, clock, add_customers(gid, "c3", "c2", "c3", "c4"))
    assert (first.code, first.customers) == (200, {"changed": 2, "unchanged": 0})
    assert (second.code, second.customers) == (200, {"changed": 2, "unchanged": 1})
    assert second.group is not None
    assert (second.group["version"], second.group["customer_count"]) == (3, 4)
    events = [r.event for r in store.outbox if isinstance(r.event, CustomersAdded)]
    assert [e.customer_ids for e in events] == [("c1", "c2"), ("c3", "c4")]
    assert events[1].payload()["customer_ids"] == ["c3", "c4"]
    assert events[1].payload()["customer_count"] == 4
    assert sorted(c for g, c in store.members if g == gid) == ["c1", "c2", "c3", "c4"]


async def test_a_command_that_changes_nothing_is_200_with_no_new_version_and_no_event(
    store: FakeCommandStore, clock: Clock
) -> None:
    gid = await group(store, clock)
    await apply(store, clock, add_customers(gid, "c1"))
    events = len(store.outbox)
    results = await apply(store, clock, add_customers(gid, "c1"), remove_customers(gid, "c9"))
    assert [(r.code, r.customers) for r in results] == [
        (200, {"changed": 0, "unchanged": 1}),
        (200, {"changed": 0, "unchanged": 1}),
    ]
    assert {r.group["version"] for r in results if r.group} == {2}
    assert len(store.outbox) == events


async def test_remove_skips_non_members_and_the_count_follows(
    store: FakeCommandStore, clock: Clock
) -> None:
    gid = await group(store, clock)
    await apply(store, clock, add_customers(gid, "c1", "c2", "c3"))
    [result] = await apply(store, clock, remove_customers(gid, "c3", "c9", "c1"))
    assert result.customers == {"changed": 2, "unchanged": 1}
    assert result.group is not None
    assert result.group["customer_count"] == 1
    [event] = [r.event for r in store.outbox if isinstance(r.event, CustomersRemoved)]
    assert event.customer_ids == ("c3", "c1")
    assert [c for g, c in store.members if g == gid] == ["c2"]


async def test_adds_and_removes_in_one_batch_see_each_other_in_order(
    store: FakeCommandStore, clock: Clock
) -> None:
    gid = await group(store, clock)
    results = await apply(
        store,
        clock,
        add_customers(gid, "c1", "c2"),
        remove_customers(gid, "c1"),
        add_customers(gid, "c1", "c2"),
    )
    assert [r.customers for r in results] == [
        {"changed": 2, "unchanged": 0},
        {"changed": 1, "unchanged": 0},
        {"changed": 1, "unchanged": 1},
    ]
    assert [r.group["version"] for r in results if r.group] == [2, 3, 4]
    assert sorted(c for g, c in store.members if g == gid) == ["c1", "c2"]


async def test_a_version_mismatch_is_409_and_changes_nothing(
    store: FakeCommandStore, clock: Clock
) -> None:
    gid = await group(store, clock)
    [result] = await apply(store, clock, add_customers(gid, "c1", expected_version=7))
    assert (result.code, result.details) == (
        409,
        {"expected_version": 7, "current_version": 1},
    )
    assert store.members == {}


async def test_another_organizations_or_a_deleted_group_is_a_404_that_leaks_nothing(
    store: FakeCommandStore, clock: Clock
) -> None:
    gid = await group(store, clock)
    [foreign] = await apply(store, clock, add_customers(gid, "c1", organization_id=OTHER_ORG))
    await apply(store, clock, delete(gid))
    [deleted] = await apply(store, clock, remove_customers(gid, "c1"))
    for result in (foreign, deleted):
        assert (result.code, result.details, result.group) == (404, {"group_id": gid}, None)
    assert store.members == {}


async def test_deleting_a_group_keeps_its_count_and_its_members_leave(
    store: FakeCommandStore, clock: Clock
) -> None:
    gid = await group(store, clock)
    await apply(store, clock, add_customers(gid, "c1", "c2"))
    [result] = await apply(store, clock, delete(gid))
    assert result.group is not None
    assert result.group["customer_count"] == 2
    [event] = [r.event for r in store.outbox if isinstance(r.event, GroupDeleted)]
    assert event.payload()["customer_count"] == 2
    assert store.members == {}


async def test_the_same_command_again_gets_its_stored_result_and_changes_nothing(
    store: FakeCommandStore, clock: Clock
) -> None:
    gid = await group(store, clock)
    command = add_customers(gid, "c1")
    [first] = await apply(store, clock, command)
    events = len(store.outbox)
    [again] = await apply(store, clock, command)
    assert again == first
    assert len(store.outbox) == events


def rule_problems(body: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as error:
        COMMAND.validate_python(body)
    problems = error.value.errors()
    assert all(p["type"] == RULE_ERROR for p in problems), problems
    return [str(p["msg"]) for p in problems]


def body(**fields: Any) -> dict[str, Any]:
    return {
        "command_id": "c-1",
        "type": "group.customers.add",
        "organization_id": "org_a",
        "group_id": "grp_1",
        **fields,
    }


@pytest.mark.parametrize(
    ("customer_ids", "says"),
    [
        ([], "at least one"),
        ([f"c{i}" for i in range(1001)], "at most 1000"),
        (["ok", " padded"], "customer_ids[1] must not start or end with whitespace"),
        (["bell\x07"], "control characters"),
        (["x" * 129], "1-128 characters"),
        ([""], "1-128 characters"),
    ],
)
def test_customer_ids_that_break_a_rule_are_a_422(customer_ids: list[str], says: str) -> None:
    [problem] = rule_problems(body(customer_ids=customer_ids))
    assert says in problem


@pytest.mark.parametrize("customer_ids", ["c1", [1, 2], None, {"c1": 1}])
def test_customer_ids_of_the_wrong_type_are_malformed(customer_ids: Any) -> None:
    parsed = parse_command(orjson.dumps(body(customer_ids=customer_ids)), 1 << 20)
    assert isinstance(parsed, Invalid)
    assert parsed.malformed
    assert (parsed.command_id, parsed.organization_id) == ("c-1", "org_a")


def test_a_transaction_takes_commands_up_to_a_bound_of_customer_ids() -> None:
    heavy = [Incoming(add_customers("grp_1", *(f"c{i}" for i in range(600)))) for _ in range(4)]
    light = [Incoming(create(f"g{i}")) for i in range(3)]
    items = [*heavy[:2], *light, *heavy[2:]]
    runs = by_weight(items, 1000)
    assert [len(run) for run in runs] == [1, 4, 1, 1]
    assert [item for run in runs for item in run] == items
