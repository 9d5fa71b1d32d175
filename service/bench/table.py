"""A bench report for people: its figures against their targets, the baselines and the
ratios, then any problem."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from service.bench.options import Report

# (figure, how to read it from the report, target, True when higher is better)
TARGETS: list[tuple[str, tuple[str, ...], float, bool]] = [
    ("commands_per_s", ("commands_per_s",), 10_000, True),
    ("latency p99 (ms)", ("latency_ms", "p99"), 50, False),
    ("relay_events_per_s", ("relay_events_per_s",), 20_000, True),
    ("rss_mb (peak, per process)", ("rss_mb",), 150, False),
]
PREEXISTING_TOLERANCE_PCT = 10


def _lookup(figures: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = figures
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def print_table(report: Report) -> None:
    f = report.figures
    console = Console()
    if machine := f.get("machine"):
        console.print(
            f"{machine['cpus']} CPUs, load average {machine['loadavg_at_start']} at start, "
            f"{machine.get('loadavg_at_end')} at end; sizes: {f.get('sizes')}",
            highlight=False,
        )
    figures = Table(title="customer-groups bench", title_justify="left")
    for column in ("figure", "value", "target", ""):
        figures.add_column(column, justify="right" if column in ("value", "target") else "left")
    for name, path, target, higher in TARGETS:
        value = _lookup(f, path)
        if value is None:
            figures.add_row(name, "-", "", "skipped")
            continue
        met = value >= target if higher else value <= target
        figures.add_row(
            name,
            f"{value:,.1f}",
            f"{'≥' if higher else '≤'} {target:,.0f}",
            "[green]met[/]" if met else "[red]missed[/]",
        )
    if latency := f.get("latency_ms"):
        figures.add_row(
            "latency p50 / p95 (ms)",
            f"{latency['p50']:,.1f} / {latency['p95']:,.1f}",
            "",
            f"at {f['latency_rate']:,}/s offered",
        )
    if to_result := f.get("latency_to_result_ms"):
        figures.add_row(
            "to result p50 / p99 (ms)",
            f"{to_result['p50']:,.1f} / {to_result['p99']:,.1f}",
            "",
            "the consumer's share",
        )
    if relay_leg := f.get("latency_relay_leg_ms"):
        figures.add_row(
            "result to event p50 / p99 (ms)",
            f"{relay_leg['p50']:,.1f} / {relay_leg['p99']:,.1f}",
            "",
            "the relay's share",
        )
    runs = f.get("groups_preexisting_runs", {})
    for groups, per_s in f.get("groups_preexisting", {}).items():
        each = " · ".join(f"{run:,.0f}" for run in runs.get(groups, []))
        note = f"mean of {each}" if each else ""
        figures.add_row(f"commands_per_s @ {int(groups):,} groups", f"{per_s:,.1f}", "", note)
    if (change := f.get("groups_preexisting_change_pct")) is not None:
        met = abs(change) <= PREEXISTING_TOLERANCE_PCT
        figures.add_row(
            "change, preexisting groups",
            f"{change:+.1f}%",
            f"within {PREEXISTING_TOLERANCE_PCT}%",
            "[green]met[/]" if met else "[red]missed[/]",
        )
    cpu = [
        (phase, value)
        for phase, value in (
            ("throughput", f.get("throughput", {}).get("service_cpu_cores")),
            ("latency", f.get("latency_service_cpu_cores")),
            ("relay", f.get("relay_service_cpu_cores")),
        )
        if value is not None
    ]
    if cpu:
        figures.add_row(
            "service CPU (cores)",
            " / ".join(f"{v:.2f}" for _, v in cpu),
            "",
            " / ".join(p for p, _ in cpu),
        )
    console.print(figures)
    if base := f.get("baselines"):
        table = Table(title="baselines (same run, same machine)", title_justify="left")
        table.add_column("baseline")
        table.add_column("value", justify="right")
        for name, value in base.items():
            table.add_row(name, f"{value:,.1f}")
        console.print(table)
    if ratios := f.get("ratios"):
        table = Table(title="ratios", title_justify="left")
        table.add_column("ours / baseline")
        table.add_column("ratio", justify="right")
        for name, value in ratios.items():
            table.add_row(name, f"{value:.3f}")
        console.print(table)
    for problem in report.problems:
        console.print(f"[bold red]PROBLEM[/] {problem}", markup=True, highlight=False)
