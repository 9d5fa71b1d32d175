"""Changes that happened to a group; each becomes one outbox row and one CloudEvent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from service.domain.model import Group, group_json


@dataclass(frozen=True, slots=True)
class GroupCreated:
    type: ClassVar[str] = "group.created"
    group: Group

    def payload(self) -> dict[str, Any]:
        return group_json(self.group)


@dataclass(frozen=True, slots=True)
class GroupUpdated:
    type: ClassVar[str] = "group.updated"
    group: Group
    previous: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {**group_json(self.group), "previous": self.previous}


@dataclass(frozen=True, slots=True)
class GroupDeleted:
    type: ClassVar[str] = "group.deleted"
    group: Group

    def payload(self) -> dict[str, Any]:
        return group_json(self.group)


@dataclass(frozen=True, slots=True)
class CustomersAdded:
    type: ClassVar[str] = "group.customers_added"
    group: Group
    customer_ids: tuple[str, ...]

    def payload(self) -> dict[str, Any]:
        return {**group_json(self.group), "customer_ids": list(self.customer_ids)}


@dataclass(frozen=True, slots=True)
class CustomersRemoved:
    type: ClassVar[str] = "group.customers_removed"
    group: Group
    customer_ids: tuple[str, ...]

    def payload(self) -> dict[str, Any]:
        return {**group_json(self.group), "customer_ids": list(self.customer_ids)}


Event = GroupCreated | GroupUpdated | GroupDeleted | CustomersAdded | CustomersRemoved
