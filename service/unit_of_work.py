"""Many commands' units of work staged in memory, so one database transaction can write
them all with set-based SQL. Each command still sees the effects of the commands before
it, in order, exactly as if each had its own transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Self

from service.domain.errors import CommandIdReused, GroupAlreadyExists, GroupNameTaken
from service.domain.events import Event
from service.domain.model import Group, name_key
from service.domain.ports import AnyCommand
from service.domain.results import CommandResult


@dataclass(frozen=True, slots=True)
class Processed:
    fingerprint: str
    result: CommandResult


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    event: Event
    command_id: str
    traceparent: str | None

    @property
    def occurred_at(self) -> datetime:
        return self.event.group.updated_at


@dataclass(slots=True)
class Staging:
    """What a batch knows of the database (loaded up front) plus what its commands changed."""

    groups: dict[str, Group] = field(default_factory=dict)
    names: dict[tuple[str, str], str] = field(default_factory=dict)
    processed: dict[tuple[str, str], Processed] = field(default_factory=dict)
    new_ids: set[str] = field(default_factory=set)
    changed: dict[str, Group] = field(default_factory=dict)
    outbox: list[OutboxRecord] = field(default_factory=list)
    records: list[tuple[AnyCommand, Processed]] = field(default_factory=list)
    # Memberships the batch's commands name, (group id, customer id) -> when added; those
    # loaded as members, then as the batch's commands leave them.
    loaded_members: dict[tuple[str, str], datetime] = field(default_factory=dict)
    members: dict[tuple[str, str], datetime] = field(default_factory=dict)
    purged: list[Group] = field(default_factory=list)

    def member_changes(
        self,
    ) -> tuple[list[tuple[Group, str, datetime]], list[tuple[Group, str]]]:
        """(added, removed) against what was loaded: a customer removed and added back in
        one batch keeps its row, and the time it was first added."""
        added = [
            (self.groups[g], c, at)
            for (g, c), at in self.members.items()
            if (g, c) not in self.loaded_members
        ]
        removed = [
            (self.groups[g], c) for (g, c) in self.loaded_members if (g, c) not in self.members
        ]
        return added, removed

    def remember(self, group: Group, *, holds_name: bool = True) -> None:
        """`holds_name` is false for a live group whose name another group holds (one that
        migration 0002 found sharing a name key with an older group)."""
        self.groups[group.id] = group
        if group.is_live and holds_name:
            self.names[group.organization_id, name_key(group.name)] = group.id

    def unit_of_work(self, command_id: str, traceparent: str | None = None) -> StagedUnitOfWork:
        return StagedUnitOfWork(self, command_id, traceparent)

    def check_name_free(self, group: Group) -> None:
        owner = self.names.get((group.organization_id, name_key(group.name)))
        if owner is not None and owner != group.id:
            raise GroupNameTaken(group.name)

    def apply(self, uow: StagedUnitOfWork) -> None:
        group = uow.groups.pending
        if group is not None:
            old = self.groups.get(group.id)
            if old is not None and old.is_live:
                old_name = (old.organization_id, name_key(old.name))
                if self.names.get(old_name) == old.id:
                    del self.names[old_name]
            if uow.groups.is_new:
                self.new_ids.add(group.id)
            self.remember(group)
            self.changed[group.id] = group
        for group, customer_ids, added_at in uow.members.added:
            self.members.update(((group.id, c), added_at) for c in customer_ids)
        for group, customer_ids in uow.members.removed:
            for customer_id in customer_ids:
                del self.members[group.id, customer_id]
        self.purged.extend(uow.members.purged)
        self.outbox.extend(uow.outbox.pending)
        if uow.processed.pending is not None:
            command, record = uow.processed.pending
            self.processed[command.organization_id, command.command_id] = record
            self.records.append(uow.processed.pending)


class StagedGroups:
    def __init__(self, staging: Staging) -> None:
        self._staging = staging
        self.pending: Group | None = None
        self.is_new = False

    async def get(self, organization_id: str, group_id: str) -> Group | None:
        group = self._staging.groups.get(group_id)
        return group if group is not None and group.organization_id == organization_id else None

    async def add(self, group: Group) -> None:
        if group.id in self._staging.groups:
            raise GroupAlreadyExists(group.id)
        self._staging.check_name_free(group)
        self.pending, self.is_new = group, True

    async def save(self, group: Group) -> None:
        if group.is_live:
            self._staging.check_name_free(group)
        self.pending = group


class StagedMemberships:
    def __init__(self, staging: Staging) -> None:
        self._staging = staging
        self.added: list[tuple[Group, Sequence[str], datetime]] = []
        self.removed: list[tuple[Group, Sequence[str]]] = []
        self.purged: list[Group] = []

    def clear(self) -> None:
        self.added, self.removed, self.purged = [], [], []

    async def members(self, group: Group, customer_ids: Sequence[str]) -> set[str]:
        members = self._staging.members
        return {c for c in customer_ids if (group.id, c) in members}

    def add(self, group: Group, customer_ids: Sequence[str], now: datetime) -> None:
        self.added.append((group, customer_ids, now))

    def remove(self, group: Group, customer_ids: Sequence[str]) -> None:
        self.removed.append((group, customer_ids))

    def purge(self, group: Group) -> None:
        self.purged.append(group)


class StagedOutbox:
    def __init__(self, command_id: str, traceparent: str | None) -> None:
        self._command_id = command_id
        self._traceparent = traceparent
        self.pending: list[OutboxRecord] = []

    def add(self, event: Event) -> None:
        self.pending.append(OutboxRecord(event, self._command_id, self._traceparent))


class StagedProcessed:
    def __init__(self, staging: Staging) -> None:
        self._staging = staging
        self.pending: tuple[AnyCommand, Processed] | None = None

    async def earlier_result(self, command: AnyCommand) -> CommandResult | None:
        seen = self._staging.processed.get((command.organization_id, command.command_id))
        if seen is None:
            return None
        if seen.fingerprint == command.fingerprint():
            return seen.result
        return CommandResult.rejected(
            command.command_id, command.organization_id, CommandIdReused(command.command_id)
        )

    def add(self, command: AnyCommand, result: CommandResult) -> None:
        self.pending = (command, Processed(command.fingerprint(), result))


class StagedUnitOfWork:
    def __init__(self, staging: Staging, command_id: str, traceparent: str | None) -> None:
        self._staging = staging
        self.groups = StagedGroups(staging)
        self.members = StagedMemberships(staging)
        self.outbox = StagedOutbox(command_id, traceparent)
        self.processed = StagedProcessed(staging)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.groups.pending = None
        self.members.clear()
        self.outbox.pending = []
        self.processed.pending = None

    async def commit(self) -> None:
        self._staging.apply(self)
        await self.__aexit__(None, None, None)
