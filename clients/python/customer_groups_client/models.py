"""What the service sends back: groups, command results and change events (contract v1, v1.1).

Every model ignores fields it does not know, since the contract grows only by adding
optional fields."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EventType = Literal[
    "group.created",
    "group.updated",
    "group.deleted",
    "group.customers_added",
    "group.customers_removed",
]


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Group(_Message):
    id: str
    organization_id: str
    name: str
    description: str | None = None
    platform_id: str | None = None
    customer_count: int = 0
    version: int = Field(ge=1)
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


class CustomersChanged(_Message):
    """What a membership command did with the ids it named, each counted once."""

    changed: int
    unchanged: int


class Result(_Message):
    """The answer to one command. A rejection is a Result too: `accepted` says which."""

    command_id: str
    status: Literal["accepted", "rejected"]
    code: int
    error: str | None = None
    details: Any = None
    group: Group | None = None
    customers: CustomersChanged | None = None

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    def accepted_group(self) -> Group:
        """The group after the command, or `Rejected` with the service's error."""
        if not self.accepted or self.group is None:
            raise Rejected(self)
        return self.group


class Membership(_Message):
    """The answer to add_customers / remove_customers."""

    group: Group
    changed: int
    unchanged: int


class Rejected(Exception):
    """The service refused the command: `code` is 404, 409 or 422, `error` and `details`
    are its Linkit-style error body."""

    def __init__(self, result: Result) -> None:
        super().__init__(f"{result.code} {result.error}: {result.details!r}")
        self.result = result
        self.code = result.code
        self.error = result.error
        self.details = result.details


class ResultTimeout(Exception):
    """No result came back after every attempt (the command may or may not be applied;
    sending it again with the same command_id is safe)."""

    def __init__(self, command_id: str, attempts: int, timeout_s: float) -> None:
        super().__init__(
            f"no result for command {command_id!r} after {attempts} attempt(s) of {timeout_s}s"
        )
        self.command_id = command_id


class GroupEvent(Group):
    """An event's value: the group after the change, plus what the event type adds."""

    previous: dict[str, Any] | None = None
    customer_ids: list[str] | None = None
