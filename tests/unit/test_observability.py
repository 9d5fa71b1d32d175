"""The service's metrics."""

from __future__ import annotations

from datetime import UTC, datetime

from service.domain.commands import CreateGroup
from service.domain.errors import GroupNotFound
from service.domain.model import Group
from service.domain.results import CommandResult
from service.observability import Metrics
from tests.unit.fakes import create as create_command


def test_commands_are_counted_by_type_outcome_and_code() -> None:
    metrics = Metrics()
    command = create_command("VIP")
    assert isinstance(command, CreateGroup)
    group = Group.create(command, "grp_1", datetime(2026, 1, 1, tzinfo=UTC))
    accepted = CommandResult.accepted("c1", 201, group)
    rejected = CommandResult.rejected("c2", "org_a", GroupNotFound("grp_x"))
    for command_type, result in [
        ("group.create", accepted),
        ("group.create", accepted),
        ("group.update", rejected),
    ]:
        metrics.count_command(command_type, result)

    def count(command_type: str, outcome: str, code: str) -> float | None:
        labels = {"type": command_type, "outcome": outcome, "code": code}
        return metrics.registry.get_sample_value("customer_groups_commands_total", labels)

    assert count("group.create", "accepted", "201") == 2
    assert count("group.update", "rejected", "404") == 1
    assert count("group.update", "accepted", "201") is None
