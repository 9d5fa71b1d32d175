"""The members phase's workload: every membership planned once, a thousand to a command."""

from __future__ import annotations

from collections import Counter

import orjson

from service.bench.members import plan_adds
from service.bench.members_plan import COMMANDS_PER_GROUP, IDS_PER_COMMAND
from service.domain.commands import AddCustomers


def test_the_adds_name_every_membership_once_over_the_groups_in_turn() -> None:
    orgs = [f"org-{i}" for i in range(3)]

    groups, adds = plan_adds(45_500, orgs, "t")

    assert len(adds) == 46
    assert len(groups) == 5 == -(-len(adds) // COMMANDS_PER_GROUP)
    assert {org for org, _ in groups} == set(orgs)
    assert [len(add.customer_ids) for add in adds] == [IDS_PER_COMMAND] * 45 + [500]
    memberships = [(add.group_id, c) for add in adds for c in add.customer_ids]
    assert len(set(memberships)) == len(memberships) == 45_500
    assert [(add.organization_id, add.group_id) for add in adds[:6]] == [*groups, groups[0]]
    assert Counter(add.group_id for add in adds) == {g: 10 for _, g in groups[:1]} | {
        g: 9 for _, g in groups[1:]
    }


def test_a_few_adds_still_reach_a_group_in_as_many_organizations() -> None:
    groups, adds = plan_adds(2500, [f"org-{i}" for i in range(10)], "t")

    assert len(adds) == 3
    assert [org for org, _ in groups] == ["org-0", "org-1", "org-2"]


def test_each_add_is_a_valid_command_keyed_by_its_organization() -> None:
    _, adds = plan_adds(1000, ["org-0"], "bench-1234abcd-m")

    key, value = adds[0].record()

    command = AddCustomers.model_validate_json(value)
    assert key == b"org-0"
    assert command.group_id == adds[0].group_id
    assert command.unique_customer_ids() == list(adds[0].customer_ids)
    assert orjson.loads(value)["type"] == "group.customers.add"
