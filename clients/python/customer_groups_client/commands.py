"""The commands producers send (contract v1 "Command", v1.1 "Commands").

The models check what the wire contract fixes (types, lengths, id patterns), so a command
that could never be read fails here, before it is sent. Rules that need the service's
state (a unique name, an existing group, the version) come back as a rejected `Result`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import to_json

OrganizationId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
GroupId = Annotated[str, StringConstraints(pattern=r"^grp_[A-Za-z0-9_-]{1,60}$")]
CommandId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
# 1-128 characters, no control characters, no whitespace at either end.
_EDGE = r"[^\s\x00-\x1f\x7f-\x9f]"
_CUSTOMER_ID = rf"^(?:{_EDGE}|{_EDGE}[^\x00-\x1f\x7f-\x9f]*{_EDGE})$"
CustomerId = Annotated[str, StringConstraints(max_length=128, pattern=_CUSTOMER_ID)]
CustomerIds = Annotated[list[CustomerId], Field(min_length=1, max_length=1000)]
Version = Annotated[int, Field(ge=1)]


def new_command_id() -> str:
    return str(uuid.uuid4())


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: ClassVar[str]
    # Fields sent only when given: `None` means "absent", except where `_SEND_NONE` says
    # it means JSON null (an update's description, which null clears).
    _SEND_NONE: ClassVar[frozenset[str]] = frozenset()

    organization_id: OrganizationId
    command_id: CommandId = Field(default_factory=new_command_id)

    def body(self) -> bytes:
        """The command's JSON, as the commands topic takes it."""
        fields: dict[str, Any] = {"command_id": self.command_id, "type": self.type}
        # Every field is a str, an int, a list of str or None: no conversion to JSON needed.
        for name, value in self.__dict__.items():
            if value is not None or (name in self._SEND_NONE and name in self.model_fields_set):
                fields.setdefault(name, value)
        return to_json(fields)


class CreateGroup(_Command):
    type: ClassVar[str] = "group.create"

    name: str
    group_id: GroupId | None = None
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    platform_id: Annotated[str, StringConstraints(max_length=255)] | None = None


class UpdateGroup(_Command):
    type: ClassVar[str] = "group.update"
    _SEND_NONE: ClassVar[frozenset[str]] = frozenset({"description", "platform_id"})

    group_id: GroupId
    name: str | None = None
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    platform_id: Annotated[str, StringConstraints(max_length=255)] | None = None
    expected_version: Version | None = None


class DeleteGroup(_Command):
    type: ClassVar[str] = "group.delete"

    group_id: GroupId
    expected_version: Version | None = None


class AddCustomers(_Command):
    type: ClassVar[str] = "group.customers.add"

    group_id: GroupId
    customer_ids: CustomerIds
    expected_version: Version | None = None


class RemoveCustomers(_Command):
    type: ClassVar[str] = "group.customers.remove"

    group_id: GroupId
    customer_ids: CustomerIds
    expected_version: Version | None = None


Command = CreateGroup | UpdateGroup | DeleteGroup | AddCustomers | RemoveCustomers
