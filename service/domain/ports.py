"""What the handlers need from storage, as small protocols the tests can fake."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self

from service.domain.commands import (
    AddCustomers,
    CreateGroup,
    DeleteGroup,
    RemoveCustomers,
    UpdateGroup,
)
from service.domain.errors import Rejected
from service.domain.events import Event
from service.domain.model import Group
from service.domain.results import CommandResult

AnyCommand = CreateGroup | UpdateGroup | DeleteGroup | AddCustomers | RemoveCustomers


class GroupRepository(Protocol):
    async def get(self, organization_id: str, group_id: str) -> Group | None:
        """The group, deleted or not, if it belongs to this organization."""

    async def add(self, group: Group) -> None:
        """Raises GroupAlreadyExists or GroupNameTaken."""

    async def save(self, group: Group) -> None:
        """Raises GroupNameTaken."""


class Memberships(Protocol):
    async def members(self, group: Group, customer_ids: Sequence[str]) -> set[str]:
        """Which of these customers are members of the group now."""

    def add(self, group: Group, customer_ids: Sequence[str], now: datetime) -> None: ...

    def remove(self, group: Group, customer_ids: Sequence[str]) -> None: ...

    def purge(self, group: Group) -> None:
        """A deleted group's members: gone from every read now, the rows removed later."""


class Outbox(Protocol):
    def add(self, event: Event) -> None: ...


class ProcessedCommands(Protocol):
    async def earlier_result(self, command: AnyCommand) -> CommandResult | None:
        """The stored result of a redelivered command, or a 409 if its id was reused."""

    def add(self, command: AnyCommand, result: CommandResult) -> None: ...


class UnitOfWork(Protocol):
    @property
    def groups(self) -> GroupRepository: ...

    @property
    def members(self) -> Memberships: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def processed(self) -> ProcessedCommands: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...


class CommandBatch(Protocol):
    """Many commands' units of work sharing one database transaction."""

    def unit_of_work(self, command_id: str, traceparent: str | None = None) -> UnitOfWork: ...

    async def flush(self) -> Rejected | None:
        """Write every committed unit of work; a lone command's change may still be refused."""


class CommandStore(Protocol):
    def batch(self, commands: Sequence[AnyCommand]) -> AbstractAsyncContextManager[CommandBatch]:
        """A transaction that has loaded what `commands` will read; it commits on exit."""
