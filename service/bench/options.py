"""What a bench run is asked to do and what it found; cheap to import (the CLI loads it)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

PHASES = ("baselines", "throughput", "latency", "relay", "members", "tracing", "client")
# Another outbox relay the peer phase compares ours with; that phase runs only when asked.
PEERS = ("debezium",)


@dataclass(frozen=True)
class BenchOptions:
    commands: int = 100_000
    organizations: int = 100
    rate: int = 1000
    latency_seconds: float = 10
    relay_backlog: int = 200_000
    preload: int = 0
    baseline_seconds: float = 10
    members: int = 1_000_000
    big_group: int = 1_000_000
    instances: int = 1
    client_commands: int = 20_000
    feed_groups: int = 20_000
    relay_process: bool = False
    external: bool = False
    keep: bool = False
    skip: frozenset[str] = frozenset()
    peer: str | None = None

    @classmethod
    def smoke(cls, **overrides: Any) -> BenchOptions:
        """Sizes small enough for the test suite; the figures mean nothing, the path is checked."""
        small = cls(
            commands=300,
            organizations=10,
            rate=200,
            latency_seconds=1.5,
            relay_backlog=500,
            baseline_seconds=1,
            members=4000,
            big_group=5000,
            client_commands=200,
            feed_groups=200,
        )
        return replace(small, **overrides)


@dataclass
class Report:
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**self.figures, "problems": self.problems}
