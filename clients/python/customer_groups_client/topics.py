"""The service's topic names (contract v1, "Topics"); every one is configurable there."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    commands: str = "customer-groups.commands"
    results: str = "customer-groups.command-results"
    events: str = "customer-groups.events"
    state: str = "customer-groups.state"

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        """`prefix`.commands, `prefix`.command-results, and so on."""
        return cls(
            commands=f"{prefix}.commands",
            results=f"{prefix}.command-results",
            events=f"{prefix}.events",
            state=f"{prefix}.state",
        )
