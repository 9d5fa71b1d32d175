"""The figures about a run as a whole: the machine, the sizes it ran at, and the service's
figures as ratios of the baselines'."""

from __future__ import annotations

import os
import platform
from typing import Any

from service.bench.options import BenchOptions

# (the service's figure, the baseline it is divided by)
RATIOS = [
    ("commands_per_s", "db_tx_per_s_c1"),
    ("commands_per_s", "db_tx_per_s_pool"),
    ("commands_per_s", "db_batch_rows_per_s"),
    ("commands_per_s", "kafka_roundtrip_msgs_per_s"),
    ("relay_events_per_s", "kafka_roundtrip_msgs_per_s"),
]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": loadavg(),
    }


def sizes(options: BenchOptions) -> dict[str, Any]:
    return {
        "commands": options.commands,
        "organizations": options.organizations,
        "latency_rate": options.rate,
        "latency_seconds": options.latency_seconds,
        "relay_backlog": options.relay_backlog,
        "preload": options.preload,
        "members": options.members,
        "big_group": options.big_group,
        "instances": 0 if options.external else options.instances,
        "relay_process": options.relay_process and not options.external,
    }


def ratios(figures: dict[str, Any]) -> dict[str, float]:
    """Each pair whose two figures were both measured (and are not zero)."""
    base = figures.get("baselines", {})
    return {
        f"{ours}/{theirs}": round(figures[ours] / base[theirs], 3)
        for ours, theirs in RATIOS
        if figures.get(ours) and base.get(theirs)
    }
