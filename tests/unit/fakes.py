"""In-memory stand-ins for PostgreSQL, so the handlers' rules can be tested in isolation,
and builders of valid commands for every test that needs some."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import TypeAdapter

from service.domain.commands import Command
from service.domain.errors import Rejected
from service.domain.model import Group
from service.domain.ports import AnyCommand
from service.unit_of_work import OutboxRecord, Processed, Staging

ORG = "org_a"
OTHER_ORG = "org_b"
_COMMAND: TypeAdapter[AnyCommand] = TypeAdapter(Command)


class Clock:
    """Each call is one millisecond later, so every change has its own timestamp."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def cmd(type_: str, organization_id: str = ORG, **fields: Any) -> AnyCommand:
    body = {"command_id": str(uuid.uuid4()), "type": type_, "organization_id": organization_id}
    return _COMMAND.validate_python({**body, **fields})


def create(name: str = "VIP", organization_id: str = ORG, **fields: Any) -> AnyCommand:
    return cmd("group.create", organization_id, name=name, **fields)


def update(group_id: str, organization_id: str = ORG, **fields: Any) -> AnyCommand:
    return cmd("group.update", organization_id, group_id=group_id, **fields)


def delete(group_id: str, organization_id: str = ORG, **fields: Any) -> AnyCommand:
    return cmd("group.delete", organization_id, group_id=group_id, **fields)


def add_customers(
    group_id: str, *customer_ids: str, organization_id: str = ORG, **fields: Any
) -> AnyCommand:
    return cmd(
        "group.customers.add",
        organization_id,
        group_id=group_id,
        customer_ids=list(customer_ids),
        **fields,
    )


def remove_customers(
    group_id: str, *customer_ids: str, organization_id: str = ORG, **fields: Any
) -> AnyCommand:
    return cmd(
        "group.customers.remove",
        organization_id,
        group_id=group_id,
        customer_ids=list(customer_ids),
        **fields,
    )


class FakeBatch(Staging):
    async def flush(self) -> Rejected | None:
        return None


class FakeCommandStore:
    """The committed state a database would hold; a batch sees it and changes it on success."""

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}
        self.processed: dict[tuple[str, str], Processed] = {}
        self.outbox: list[OutboxRecord] = []
        self.members: dict[tuple[str, str], datetime] = {}
        self.commits = 0

    @asynccontextmanager
    async def batch(self, commands: Sequence[AnyCommand]) -> AsyncIterator[FakeBatch]:
        staging = FakeBatch()
        for group in self.groups.values():
            staging.remember(group)
        staging.processed = dict(self.processed)
        staging.loaded_members = dict(self.members)
        staging.members = dict(self.members)
        yield staging
        purged = {g.id for g in staging.purged}
        self.members = {k: v for k, v in staging.members.items() if k[0] not in purged}
        self.groups.update(staging.changed)
        for command, record in staging.records:
            self.processed[command.organization_id, command.command_id] = record
        self.outbox.extend(staging.outbox)
        self.commits += 1
