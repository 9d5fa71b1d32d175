"""The answer to one command, as producers receive it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from service.domain.errors import Rejected
from service.domain.model import Group, group_json


@dataclass(frozen=True, slots=True)
class CommandResult:
    command_id: str
    organization_id: str
    status: Literal["accepted", "rejected"]
    code: int
    error: str | None = None
    details: Any = None
    group: dict[str, Any] | None = None
    # Membership commands only: {"changed": n, "unchanged": m}.
    customers: dict[str, int] | None = None

    @classmethod
    def accepted(
        cls, command_id: str, code: int, group: Group, customers: dict[str, int] | None = None
    ) -> CommandResult:
        return cls(
            command_id,
            group.organization_id,
            "accepted",
            code,
            group=group_json(group),
            customers=customers,
        )

    @classmethod
    def rejected(cls, command_id: str, organization_id: str, reason: Rejected) -> CommandResult:
        return cls(
            command_id, organization_id, "rejected", reason.code, reason.error, reason.details
        )

    def not_sendable(self, why: str) -> CommandResult:
        """A small stand-in with the same outcome, for a result Kafka could never take."""
        return CommandResult(
            self.command_id,
            self.organization_id,
            self.status,
            self.code,
            "Result not sendable",
            {"reason": why},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "status": self.status,
            "code": self.code,
            "error": self.error,
            "details": self.details,
            "group": self.group,
            **({} if self.customers is None else {"customers": self.customers}),
        }

    @classmethod
    def from_json(cls, organization_id: str, data: dict[str, Any]) -> CommandResult:
        return cls(
            command_id=data["command_id"],
            organization_id=organization_id,
            status=data["status"],
            code=data["code"],
            error=data.get("error"),
            details=data.get("details"),
            group=data.get("group"),
            customers=data.get("customers"),
        )
