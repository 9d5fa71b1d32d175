"""The customer group and its rules. Pure: time and ids come in as arguments."""

from __future__ import annotations

import os
import time
import unicodedata
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson

from service.domain.commands import CreateGroup, DeleteGroup, UpdateGroup
from service.domain.errors import VersionConflict

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_group_id(now_ms: int | None = None) -> str:
    """`grp_` + a ULID: 48 bits of milliseconds then 80 random bits, so ids sort by creation."""
    millis = int(time.time() * 1000) if now_ms is None else now_ms
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    chars = [_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5)]
    return "grp_" + "".join(chars)


def name_key(name: str) -> str:
    """The form in which names are unique per organization among live groups: Unicode's
    canonical caseless match (NFD, full case folding), stored composed.

    The database stores this key rather than folding names itself: its lower() depends on
    its collation and differs from Python's, so the in-batch check and the index disagreed.
    Decomposing first matters: folding can itself yield a decomposed sequence (long s and
    an acute, U+017F U+0301, fold to "s" U+0301; "ś" to itself) or a new starter (U+0345
    folds to iota), which composing before folding would leave unequal. A change here
    needs a migration that recomputes the stored keys (Unicode's stability policies keep
    them valid across versions for characters already assigned)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", name).casefold())


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    organization_id: str
    name: str
    description: str | None
    platform_id: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
    # Kept with the group in the transaction that changes its members; a deleted group
    # keeps the count it had.
    customer_count: int = 0

    @property
    def is_live(self) -> bool:
        return self.deleted_at is None

    @classmethod
    def create(cls, command: CreateGroup, group_id: str, now: datetime) -> Group:
        assert command.name is not None  # the command's validator guarantees it
        return cls(
            id=group_id,
            organization_id=command.organization_id,
            name=command.name,
            description=command.description,
            platform_id=command.platform_id,
            version=1,
            created_at=now,
            updated_at=now,
        )

    def check_version(self, expected: int | None) -> None:
        if expected is not None and expected != self.version:
            raise VersionConflict(expected, self.version)

    def update(self, command: UpdateGroup, now: datetime) -> tuple[Group, dict[str, Any]]:
        """The updated group and the old values of what changed; a no-op returns self."""
        self.check_version(command.expected_version)
        changed = {
            field: value
            for field, value in command.changes().items()
            if getattr(self, field) != value
        }
        if not changed:
            return self, {}
        previous = {field: getattr(self, field) for field in changed}
        updated = replace(self, version=self.version + 1, updated_at=now, **changed)  # type: ignore[arg-type]
        return updated, previous

    def delete(self, command: DeleteGroup, now: datetime) -> Group:
        self.check_version(command.expected_version)
        return replace(self, version=self.version + 1, updated_at=now, deleted_at=now)

    def with_customers(self, changed: int, now: datetime) -> Group:
        """One new version for a command that added (changed > 0) or removed (< 0) members."""
        return replace(
            self,
            version=self.version + 1,
            updated_at=now,
            customer_count=self.customer_count + changed,
        )


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds; every time here is UTC (asyncpg returns UTC).

    orjson writes it much faster than isoformat (docs/benchmark.md), but leaves out a zero
    fraction, which the contract keeps."""
    if value.microsecond:
        return orjson.dumps(value, option=orjson.OPT_UTC_Z)[1:-1].decode()
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z")


def group_json(group: Group) -> dict[str, Any]:
    return {
        "id": group.id,
        "organization_id": group.organization_id,
        "name": group.name,
        "description": group.description,
        "platform_id": group.platform_id,
        "customer_count": group.customer_count,
        "version": group.version,
        "created_at": format_time(group.created_at),
        "updated_at": format_time(group.updated_at),
        "deleted_at": None if group.deleted_at is None else format_time(group.deleted_at),
    }
