"""What a chaos run is asked to do; cheap to import (the CLI loads it)."""

from __future__ import annotations

import random
from dataclasses import dataclass

FAULTS = (
    "kill",
    "pause_relay",
    "kill_backend",
    "kafka_restart",
    "postgres_restart_fast",
    "postgres_restart_immediate",
    "add_instance",
)


@dataclass(frozen=True)
class ChaosOptions:
    seconds: float = 600
    instances: int = 3
    relays: int = 2
    organizations: int = 100
    rate: int = 200
    faults: tuple[str, ...] = FAULTS
    # At least this many of each kind, spread over the run at seeded random times.
    each: int = 2
    seed: int = 1
    # After the load stops: the longest wait for every result and event.
    settle_s: float = 120

    def schedule(self) -> list[tuple[float, str]]:
        """(seconds into the run, fault kind), in time order: within the middle of the run,
        so the load runs before the first fault and after the last."""
        chooser = random.Random(self.seed)
        kinds = [kind for kind in self.faults for _ in range(self.each)]
        chooser.shuffle(kinds)
        start, end = 0.1 * self.seconds, 0.8 * self.seconds
        slot = (end - start) / max(len(kinds), 1)
        return [
            (round(start + slot * (i + chooser.uniform(0.1, 0.9)), 1), kind)
            for i, kind in enumerate(kinds)
        ]
