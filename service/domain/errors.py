"""Why a command was rejected, in the Linkit error shape of the wire contract."""

from __future__ import annotations

from typing import Any


class Rejected(Exception):
    code: int = 422
    error: str = "Validation error"

    def __init__(self, details: Any = None) -> None:
        super().__init__(self.error)
        self.details = details


class InvalidCommand(Rejected):
    code = 422
    error = "Validation error"


class GroupNotFound(Rejected):
    code = 404
    error = "Group not found"

    def __init__(self, group_id: str) -> None:
        super().__init__({"group_id": group_id})


class GroupNameTaken(Rejected):
    code = 409
    error = "Group with same name already exists"

    def __init__(self, name: str) -> None:
        super().__init__({"name": name})


class GroupAlreadyExists(Rejected):
    code = 409
    error = "Group already exists"

    def __init__(self, group_id: str) -> None:
        super().__init__({"group_id": group_id})


class VersionConflict(Rejected):
    code = 409
    error = "Version conflict"

    def __init__(self, expected: int, current: int) -> None:
        super().__init__({"expected_version": expected, "current_version": current})


class CommandIdReused(Rejected):
    code = 409
    error = "Command id already used with a different payload"

    def __init__(self, command_id: str) -> None:
        super().__init__({"command_id": command_id})


class BatchConflict(Exception):
    """The database refused a batch the staged checks had passed; retry its commands one by one."""
