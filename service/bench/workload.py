"""A deterministic command mix whose every outcome is known before it is sent.

About 60% creates, 30% updates, 10% deletes, spread evenly over the organizations. About
2% of all commands are creates that reuse a live name (in other letter case), so they are
rejected with 409 and make no event. Updates always change the name and the description,
and updates and deletes only target groups that are live at that point of the sequence;
commands are keyed by organization, so the service sees each organization's commands in
this order and every accepted command makes exactly one event."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import orjson

Kind = Literal["create", "conflict", "update", "delete"]

CODES: dict[Kind, int] = {"create": 201, "conflict": 409, "update": 200, "delete": 200}
CREATE_SHARE, UPDATE_SHARE = 0.6, 0.3
CONFLICT_SHARE = 0.02


@dataclass(frozen=True, slots=True)
class Planned:
    """One command and the state of its group once the command is applied."""

    kind: Kind
    organization_id: str
    command_id: str
    group_id: str
    name: str
    description: str
    version: int

    @property
    def eventful(self) -> bool:
        return self.kind != "conflict"

    @property
    def deleted(self) -> bool:
        return self.kind == "delete"

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "command_id": self.command_id,
            "type": "group." + ("create" if self.kind == "conflict" else self.kind),
            "organization_id": self.organization_id,
            "group_id": self.group_id,
        }
        if self.kind != "delete":
            body["name"] = self.name
            body["description"] = self.description
        return body


def organizations(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-org-{i}" for i in range(count)]


@dataclass
class _Live:
    group_id: str
    name: str
    description: str
    version: int


def plan(count: int, orgs: list[str], tag: str, seed: int = 7) -> list[Planned]:
    """`count` commands over `orgs`; `tag` keeps ids and names unique between workloads."""
    rng = random.Random(seed)
    live: dict[str, list[_Live]] = {org: [] for org in orgs}
    planned: list[Planned] = []
    for seq in range(count):
        org = orgs[rng.randrange(len(orgs))]
        groups = live[org]
        command_id = f"{tag}-{seq}"
        roll = rng.random()
        description = f"Customers of segment {tag}-{seq} with premium benefits and offers"
        if roll < CREATE_SHARE or not groups:
            group_id = f"grp_{tag}-{seq}"
            if groups and rng.random() < CONFLICT_SHARE / CREATE_SHARE:
                taken = groups[rng.randrange(len(groups))].name.upper()
                planned.append(
                    Planned("conflict", org, command_id, group_id, taken, description, 1)
                )
                continue
            group = _Live(group_id, f"Group {tag}-{seq}", description, 1)
            groups.append(group)
            kind: Kind = "create"
        else:
            index = rng.randrange(len(groups))
            group = groups[index]
            group.version += 1
            if roll < CREATE_SHARE + UPDATE_SHARE:
                group.name, group.description = f"Group {tag}-{seq} renamed", description
                kind = "update"
            else:
                groups[index] = groups[-1]
                groups.pop()
                kind = "delete"
        planned.append(
            Planned(
                kind, org, command_id, group.group_id, group.name, group.description, group.version
            )
        )
    return planned


def encode(planned: list[Planned]) -> list[tuple[bytes, bytes]]:
    """(key, value) records as a producer sends them: keyed by organization."""
    return [(p.organization_id.encode(), orjson.dumps(p.body())) for p in planned]


def expected_codes(planned: list[Planned]) -> Counter[int]:
    return Counter(CODES[p.kind] for p in planned)


def expected_events(planned: list[Planned]) -> int:
    return sum(p.eventful for p in planned)
