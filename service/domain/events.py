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


Event = GroupCreated | GroupUpdated | GroupDeleted
