"""What every phase of a bench run is given: the options, the names the run writes under,
the database it may reset, and the report it adds figures and problems to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.bench.database import BenchDatabase
from service.bench.options import BenchOptions, Report

Progress = Callable[[str], None]


@dataclass
class BenchRun:
    options: BenchOptions
    prefix: str
    database: BenchDatabase
    report: Report
    progress: Progress
    peak_rss_mb: float = 0.0

    @property
    def orgs(self) -> list[str]:
        return self.database.orgs

    @property
    def figures(self) -> dict[str, Any]:
        return self.report.figures

    def problem(self, message: str) -> None:
        self.report.problems.append(message)
        self.progress(f"PROBLEM: {message}")

    def tag(self, name: str) -> str:
        """Unique to this run, so ids and names never meet an earlier run's on a shared topic."""
        return f"{self.prefix}-{name}"

    def note_rss(self, mb: float) -> None:
        """`rss_mb` is the peak of every service process in the run, whichever phase ran it."""
        self.peak_rss_mb = max(self.peak_rss_mb, mb)
        self.figures["rss_mb"] = round(self.peak_rss_mb, 1)
