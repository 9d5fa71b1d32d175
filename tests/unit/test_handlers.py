from __future__ import annotations

from typing import Any

import pytest

from service.domain.commands import GROUP_ID
from service.domain.events import GroupCreated, GroupDeleted, GroupUpdated
from service.domain.model import group_json
from service.domain.ports import AnyCommand
from service.domain.results import CommandResult
from service.handlers import Incoming, apply_commands
from tests.unit.fakes import (
    ORG,
    OTHER_ORG,
    Clock,
    FakeCommandStore,
    cmd,
    create,
    delete,
    update,
)


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


async def one(store: FakeCommandStore, clock: Clock, command: AnyCommand) -> CommandResult:
    [result] = await apply(store, clock, command)
    return result


async def created(store: FakeCommandStore, clock: Clock, name: str = "VIP", **fields: Any) -> str:
    result = await one(store, clock, create(name, **fields))
    assert result.code == 201, result
    assert result.group is not None
    return str(result.group["id"])


def events_of(store: FakeCommandStore, group_id: str) -> list[Any]:
    return [r.event for r in store.outbox if r.event.group.id == group_id]


async def test_create_stores_the_group_its_event_and_its_result(
    store: FakeCommandStore, clock: Clock
) -> None:
    command = create(" VIP Customers ", description="Premium", platform_id="12345678")
    result = await one(store, clock, command)

    assert (result.status, result.code, result.error, result.details) == (
        "accepted",
        201,
        None,
        None,
    )
    assert result.group is not None
    group = store.groups[result.group["id"]]
    assert group_json(group) == result.group
    assert (group.name, group.description, group.platform_id) == (
        "VIP Customers",
        "Premium",
        "12345678",
    )
    assert (group.organization_id, group.version, group.deleted_at) == (ORG, 1, None)
    assert group.created_at == group.updated_at
    assert GROUP_ID.fullmatch(group.id)
    [record] = store.outbox
    assert isinstance(record.event, GroupCreated)
    assert record.event.group == group
    assert record.command_id == command.command_id
    assert store.processed[ORG, command.command_id].result == result


async def test_create_keeps_a_client_chosen_group_id(store: FakeCommandStore, clock: Clock) -> None:
    group_id = await created(store, clock, group_id="grp_mine-1")
    assert group_id == "grp_mine-1"


async def test_generated_ids_are_distinct(store: FakeCommandStore, clock: Clock) -> None:
    ids = {await created(store, clock, f"Group {n}") for n in range(20)}
    assert len(ids) == 20


async def test_create_with_an_existing_group_id_is_a_conflict(
    store: FakeCommandStore, clock: Clock
) -> None:
    await created(store, clock, "First", group_id="grp_1")
    result = await one(store, clock, create("Second", group_id="grp_1"))
    assert (result.status, result.code, result.error) == ("rejected", 409, "Group already exists")
    assert result.details == {"group_id": "grp_1"}
    assert store.groups["grp_1"].name == "First"
    assert len(store.outbox) == 1


@pytest.mark.parametrize("taken", ["VIP", "vip", " Vip ", "\tVIP\n", "vIp  "])
async def test_name_is_taken_case_insensitively_after_trimming(
    store: FakeCommandStore, clock: Clock, taken: str
) -> None:
    await created(store, clock, "VIP")
    result = await one(store, clock, create(taken))
    assert result.to_json() == {
        "command_id": result.command_id,
        "status": "rejected",
        "code": 409,
        "error": "Group with same name already exists",
        "details": {"name": taken.strip()},
        "group": None,
    }
    assert len(store.groups) == 1
    assert len(store.outbox) == 1


async def test_the_same_name_in_another_organization_is_free(
    store: FakeCommandStore, clock: Clock
) -> None:
    await created(store, clock, "VIP")
    result = await one(store, clock, create("VIP", OTHER_ORG))
    assert result.code == 201


async def test_update_changes_only_the_fields_sent(store: FakeCommandStore, clock: Clock) -> None:
    group_id = await created(store, clock, "VIP", description="Old", platform_id="p1")
    before = store.groups[group_id]

    result = await one(store, clock, update(group_id, name="Gold", expected_version=1))

    assert (result.status, result.code) == ("accepted", 200)
    after = store.groups[group_id]
    assert result.group == group_json(after)
    assert (after.name, after.description, after.platform_id) == ("Gold", "Old", "p1")
    assert after.version == 2
    assert after.created_at == before.created_at
    assert after.updated_at > before.updated_at
    event = events_of(store, group_id)[-1]
    assert isinstance(event, GroupUpdated)
    assert event.previous == {"name": "VIP"}
    assert event.payload()["previous"] == {"name": "VIP"}
    assert event.group == after


async def test_update_previous_holds_every_changed_old_value(
    store: FakeCommandStore, clock: Clock
) -> None:
    group_id = await created(store, clock, "VIP", description="Old")
    await one(store, clock, update(group_id, name="VIP", description="New", platform_id="p"))
    event = events_of(store, group_id)[-1]
    assert event.previous == {"description": "Old", "platform_id": None}


async def test_description_null_clears_it_and_absent_leaves_it(
    store: FakeCommandStore, clock: Clock
) -> None:
    group_id = await created(store, clock, "VIP", description="Old", platform_id="p1")
    await one(store, clock, update(group_id, name="Gold"))
    assert store.groups[group_id].description == "Old"

    result = await one(store, clock, update(group_id, description=None, platform_id=None))

    assert result.group is not None
    assert (result.group["description"], result.group["platform_id"]) == (None, None)
    assert store.groups[group_id].version == 3
    assert events_of(store, group_id)[-1].previous == {"description": "Old", "platform_id": "p1"}


@pytest.mark.parametrize(
    "fields",
    [{}, {"name": "VIP"}, {"name": "  VIP "}, {"description": "Old"}, {"platform_id": None}],
)
async def test_an_update_that_changes_nothing_is_accepted_without_a_version_or_event(
    store: FakeCommandStore, clock: Clock, fields: dict[str, Any]
) -> None:
    group_id = await created(store, clock, "VIP", description="Old")
    before = store.groups[group_id]

    command = update(group_id, expected_version=1, **fields)
    result = await one(store, clock, command)

    assert (result.status, result.code, result.group) == ("accepted", 200, group_json(before))
    assert store.groups[group_id] == before
    assert len(store.outbox) == 1
    assert store.processed[ORG, command.command_id].result == result


async def test_renaming_in_another_case_is_a_change(store: FakeCommandStore, clock: Clock) -> None:
    group_id = await created(store, clock, "VIP")
    result = await one(store, clock, update(group_id, name="vip"))
    assert (result.code, store.groups[group_id].name, store.groups[group_id].version) == (
        200,
        "vip",
        2,
    )


async def test_update_to_a_name_another_live_group_has_is_a_conflict(
    store: FakeCommandStore, clock: Clock
) -> None:
    await created(store, clock, "VIP")
    group_id = await created(store, clock, "Gold")
    result = await one(store, clock, update(group_id, name=" vip"))
    assert (result.code, result.error, result.details) == (
        409,
        "Group with same name already exists",
        {"name": "vip"},
    )
    assert store.groups[group_id].name == "Gold"
    assert store.groups[group_id].version == 1


@pytest.mark.parametrize("make", [update, delete])
async def test_a_version_mismatch_is_a_conflict_with_both_versions(
    store: FakeCommandStore, clock: Clock, make: Any
) -> None:
    group_id = await created(store, clock, "VIP")
    await one(store, clock, update(group_id, name="Gold"))

    result = await one(store, clock, make(group_id, expected_version=1))

    assert result.to_json() == {
        "command_id": result.command_id,
        "status": "rejected",
        "code": 409,
        "error": "Version conflict",
        "details": {"expected_version": 1, "current_version": 2},
        "group": None,
    }
    assert store.groups[group_id].version == 2
    assert store.groups[group_id].deleted_at is None
    assert len(store.outbox) == 2


async def test_a_version_mismatch_is_a_conflict_even_for_a_no_op(
    store: FakeCommandStore, clock: Clock
) -> None:
    group_id = await created(store, clock, "VIP")
    result = await one(store, clock, update(group_id, name="VIP", expected_version=2))
    assert (result.code, result.details) == (409, {"expected_version": 2, "current_version": 1})


async def test_delete_bumps_the_version_and_frees_the_name(
    store: FakeCommandStore, clock: Clock
) -> None:
    group_id = await created(store, clock, "VIP")

    result = await one(store, clock, delete(group_id, expected_version=1))

    deleted = store.groups[group_id]
    assert (result.status, result.code, result.group) == ("accepted", 200, group_json(deleted))
    assert deleted.version == 2
    assert deleted.deleted_at is not None
    assert deleted.deleted_at == deleted.updated_at
    event = events_of(store, group_id)[-1]
    assert isinstance(event, GroupDeleted)
    assert event.payload()["deleted_at"] is not None
    again = await one(store, clock, create("vip"))
    assert again.code == 201
    assert again.group is not None
    assert again.group["id"] != group_id


async def test_a_rename_frees_the_old_name(store: FakeCommandStore, clock: Clock) -> None:
    group_id = await created(store, clock, "VIP")
    await one(store, clock, update(group_id, name="Gold"))
    assert (await one(store, clock, create("VIP"))).code == 201
    assert (await one(store, clock, create("gold"))).code == 409


async def test_missing_deleted_and_foreign_groups_are_all_not_found(
    store: FakeCommandStore, clock: Clock
) -> None:
    deleted_id = await created(store, clock, "Gone")
    await one(store, clock, delete(deleted_id))
    foreign_id = await one(store, clock, create("Theirs", OTHER_ORG))
    assert foreign_id.group is not None
    foreign = foreign_id.group["id"]
    state = dict(store.groups)
    outbox = len(store.outbox)

    for group_id in ("grp_missing", deleted_id, foreign):
        for command in (
            update(group_id, name="Mine"),
            update(group_id, name="Mine", expected_version=1),
            delete(group_id),
            delete(group_id, expected_version=99),
        ):
            result = await one(store, clock, command)
            assert result.to_json() == {
                "command_id": command.command_id,
                "status": "rejected",
                "code": 404,
                "error": "Group not found",
                "details": {"group_id": group_id},
                "group": None,
            }
            assert result.organization_id == ORG
    assert store.groups == state
    assert len(store.outbox) == outbox


async def test_a_foreign_group_id_cannot_be_reused_by_create(
    store: FakeCommandStore, clock: Clock
) -> None:
    await created(store, clock, "Theirs", group_id="grp_x")
    result = await one(store, clock, create("Mine", OTHER_ORG, group_id="grp_x"))
    assert result.code == 409
    assert store.groups["grp_x"].organization_id == ORG


async def test_version_grows_by_exactly_one_with_every_change(
    store: FakeCommandStore, clock: Clock
) -> None:
    group_id = await created(store, clock, "V1")
    for n in range(2, 6):
        await one(store, clock, update(group_id, name=f"V{n}"))
        await one(store, clock, update(group_id, name=f"V{n}"))  # a no-op in between
    await one(store, clock, delete(group_id))

    events = events_of(store, group_id)
    assert [e.group.version for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.type for e in events] == ["group.created"] + ["group.updated"] * 4 + ["group.deleted"]
    assert store.groups[group_id].version == 6


async def test_a_redelivered_command_gets_its_stored_result_and_changes_nothing(
    store: FakeCommandStore, clock: Clock
) -> None:
    command = create("VIP")
    first = await one(store, clock, command)
    assert first.group is not None
    await one(store, clock, update(first.group["id"], name="Gold"))
    state, outbox = dict(store.groups), list(store.outbox)

    again = await one(store, clock, command)

    assert again == first
    assert again.group is not None
    assert again.group["version"] == 1
    assert store.groups == state
    assert store.outbox == outbox


async def test_a_redelivered_rejection_is_rejected_again_even_if_it_would_now_pass(
    store: FakeCommandStore, clock: Clock
) -> None:
    command = update("grp_later", name="Mine")
    first = await one(store, clock, command)
    assert first.code == 404
    await created(store, clock, "Later", group_id="grp_later")

    assert await one(store, clock, command) == first
    assert store.groups["grp_later"].name == "Later"


async def test_a_redelivery_within_one_batch_applies_once(
    store: FakeCommandStore, clock: Clock
) -> None:
    command = create("VIP")
    first, second = await apply(store, clock, command, command)
    assert first == second
    assert first.code == 201
    assert len(store.groups) == 1
    assert len(store.outbox) == 1


async def test_a_reused_command_id_with_other_content_is_a_conflict(
    store: FakeCommandStore, clock: Clock
) -> None:
    original = create("VIP")
    stored = await one(store, clock, original)
    reused = cmd("group.create", command_id=original.command_id, name="Gold")

    result = await one(store, clock, reused)

    assert result.to_json() == {
        "command_id": original.command_id,
        "status": "rejected",
        "code": 409,
        "error": "Command id already used with a different payload",
        "details": {"command_id": original.command_id},
        "group": None,
    }
    assert [g.name for g in store.groups.values()] == ["VIP"]
    assert len(store.outbox) == 1
    assert store.processed[ORG, original.command_id].result == stored
    assert await one(store, clock, original) == stored


async def test_an_explicit_null_is_other_content_than_an_absent_field(
    store: FakeCommandStore, clock: Clock
) -> None:
    group_id = await created(store, clock, "VIP", description="Old")
    first = update(group_id, name="Gold")
    await one(store, clock, first)
    with_null = cmd(
        "group.update",
        command_id=first.command_id,
        group_id=group_id,
        name="Gold",
        description=None,
    )
    assert (await one(store, clock, with_null)).code == 409
    assert store.groups[group_id].description == "Old"


async def test_the_same_command_id_in_another_organization_is_another_command(
    store: FakeCommandStore, clock: Clock
) -> None:
    mine = create("VIP")
    theirs = cmd("group.create", OTHER_ORG, command_id=mine.command_id, name="VIP")
    assert [r.code for r in await apply(store, clock, mine, theirs)] == [201, 201]


async def test_commands_in_one_batch_see_the_effects_of_earlier_ones(
    store: FakeCommandStore, clock: Clock
) -> None:
    first = create("A", group_id="grp_a")
    results = await apply(
        store,
        clock,
        first,
        update("grp_a", name="B", expected_version=1),
        create("a"),
        create("b"),
        delete("grp_a", expected_version=2),
        create("B", group_id="grp_b"),
        update("grp_a", name="C"),
    )
    assert [r.code for r in results] == [201, 200, 201, 409, 200, 201, 404]
    assert store.commits == 1
    assert [(e.type, e.group.version) for e in events_of(store, "grp_a")] == [
        ("group.created", 1),
        ("group.updated", 2),
        ("group.deleted", 3),
    ]


async def test_names_can_be_swapped_within_one_batch(store: FakeCommandStore, clock: Clock) -> None:
    await created(store, clock, "X", group_id="grp_x")
    await created(store, clock, "Y", group_id="grp_y")
    results = await apply(
        store,
        clock,
        update("grp_x", name="tmp"),
        update("grp_y", name="X"),
        update("grp_x", name="Y"),
    )
    assert [r.code for r in results] == [200, 200, 200]
    assert (store.groups["grp_x"].name, store.groups["grp_y"].name) == ("Y", "X")


async def test_a_traceparent_travels_with_the_event(store: FakeCommandStore, clock: Clock) -> None:
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await apply_commands(store, [Incoming(create("VIP"), trace)], clock)
    assert store.outbox[0].traceparent == trace
