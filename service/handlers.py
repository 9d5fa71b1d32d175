"""One function per command. Each is a unit of work: it either commits all of its effects
(group row, outbox event, processed-command record) or none of them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.domain.commands import (
    AddCustomers,
    CreateGroup,
    DeleteGroup,
    RemoveCustomers,
    UpdateGroup,
)
from service.domain.errors import BatchConflict, GroupNotFound, Rejected
from service.domain.events import (
    CustomersAdded,
    CustomersRemoved,
    GroupCreated,
    GroupDeleted,
    GroupUpdated,
)
from service.domain.model import Group, new_group_id
from service.domain.ports import AnyCommand, CommandStore, UnitOfWork
from service.domain.results import CommandResult

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


async def create_group(command: CreateGroup, uow: UnitOfWork, now: Clock) -> CommandResult:
    return await _recorded(command, uow, lambda: _create(command, uow, now))


async def update_group(command: UpdateGroup, uow: UnitOfWork, now: Clock) -> CommandResult:
    return await _recorded(command, uow, lambda: _update(command, uow, now))


async def delete_group(command: DeleteGroup, uow: UnitOfWork, now: Clock) -> CommandResult:
    return await _recorded(command, uow, lambda: _delete(command, uow, now))


async def add_customers(command: AddCustomers, uow: UnitOfWork, now: Clock) -> CommandResult:
    return await _recorded(command, uow, lambda: _add_customers(command, uow, now))


async def remove_customers(command: RemoveCustomers, uow: UnitOfWork, now: Clock) -> CommandResult:
    return await _recorded(command, uow, lambda: _remove_customers(command, uow, now))


async def _recorded(
    command: AnyCommand, uow: UnitOfWork, change: Callable[[], Awaitable[CommandResult]]
) -> CommandResult:
    """Every command's transaction: a redelivery gets its stored result and changes nothing;
    otherwise the change, or why the rules refused it, is recorded as the command's answer
    with the change's effects, all committed together."""
    async with uow:
        if (earlier := await uow.processed.earlier_result(command)) is not None:
            return earlier
        try:
            result = await change()
        except Rejected as reason:
            result = CommandResult.rejected(command.command_id, command.organization_id, reason)
        uow.processed.add(command, result)
        await uow.commit()
    return result


async def _create(command: CreateGroup, uow: UnitOfWork, now: Clock) -> CommandResult:
    group = Group.create(command, command.group_id or new_group_id(), now())
    await uow.groups.add(group)
    uow.outbox.add(GroupCreated(group))
    return CommandResult.accepted(command.command_id, 201, group)


async def _update(command: UpdateGroup, uow: UnitOfWork, now: Clock) -> CommandResult:
    group = await _live_group(uow, command)
    updated, previous = group.update(command, now())
    if previous:
        await uow.groups.save(updated)
        uow.outbox.add(GroupUpdated(updated, previous))
    return CommandResult.accepted(command.command_id, 200, updated)


async def _delete(command: DeleteGroup, uow: UnitOfWork, now: Clock) -> CommandResult:
    group = await _live_group(uow, command)
    deleted = group.delete(command, now())
    await uow.groups.save(deleted)
    if deleted.customer_count:
        uow.members.purge(deleted)
    uow.outbox.add(GroupDeleted(deleted))
    return CommandResult.accepted(command.command_id, 200, deleted)


async def _add_customers(command: AddCustomers, uow: UnitOfWork, now: Clock) -> CommandResult:
    group = await _live_group(uow, command)
    group.check_version(command.expected_version)
    wanted = command.unique_customer_ids()
    members = await uow.members.members(group, wanted)
    added = [c for c in wanted if c not in members]
    if added:
        group = group.with_customers(len(added), now())
        await uow.groups.save(group)
        uow.members.add(group, added, group.updated_at)
        uow.outbox.add(CustomersAdded(group, tuple(added)))
    counts = {"changed": len(added), "unchanged": len(wanted) - len(added)}
    return CommandResult.accepted(command.command_id, 200, group, counts)


async def _remove_customers(command: RemoveCustomers, uow: UnitOfWork, now: Clock) -> CommandResult:
    group = await _live_group(uow, command)
    group.check_version(command.expected_version)
    wanted = command.unique_customer_ids()
    members = await uow.members.members(group, wanted)
    removed = [c for c in wanted if c in members]
    if removed:
        group = group.with_customers(-len(removed), now())
        await uow.groups.save(group)
        uow.members.remove(group, removed)
        uow.outbox.add(CustomersRemoved(group, tuple(removed)))
    counts = {"changed": len(removed), "unchanged": len(wanted) - len(removed)}
    return CommandResult.accepted(command.command_id, 200, group, counts)


async def _live_group(
    uow: UnitOfWork, command: UpdateGroup | DeleteGroup | AddCustomers | RemoveCustomers
) -> Group:
    group = await uow.groups.get(command.organization_id, command.group_id)
    if group is None or not group.is_live:
        raise GroupNotFound(command.group_id)
    return group


Handler = Callable[[Any, UnitOfWork, Clock], Awaitable[CommandResult]]

HANDLERS: dict[type[AnyCommand], Handler] = {
    CreateGroup: create_group,
    UpdateGroup: update_group,
    DeleteGroup: delete_group,
    AddCustomers: add_customers,
    RemoveCustomers: remove_customers,
}


async def handle(command: AnyCommand, uow: UnitOfWork, now: Clock = utc_now) -> CommandResult:
    return await HANDLERS[type(command)](command, uow, now)


@dataclass(frozen=True, slots=True)
class Incoming:
    command: AnyCommand
    traceparent: str | None = None

    @property
    def command_id(self) -> str:
        return self.command.command_id


async def apply_commands(
    store: CommandStore, items: Sequence[Incoming], now: Clock = utc_now
) -> list[CommandResult]:
    """Apply commands in order, all in one transaction; each keeps its own result.

    Results are returned only once the transaction has committed, so no producer ever
    hears of a change that could still be rolled back."""
    try:
        async with store.batch([item.command for item in items]) as batch:
            results = [
                await handle(
                    item.command, batch.unit_of_work(item.command_id, item.traceparent), now
                )
                for item in items
            ]
            refused = await batch.flush()
    except BatchConflict:
        if len(items) == 1:
            raise
        return [result for item in items for result in await apply_commands(store, [item], now)]
    if refused is not None:
        command = items[0].command
        return [CommandResult.rejected(command.command_id, command.organization_id, refused)]
    return results
