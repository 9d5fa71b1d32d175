"""A bench report for people: its figures against their targets, the baselines and the
ratios, then any problem."""

from __future__ import annotations

from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from service.bench.options import Report

# How a figure must compare with its target: at least it, at most it, or a ratio within
# that many percent of 1.
Rule = Literal["≥", "≤", "±%"]

# (figure, how to read it from the report, target, rule)
TARGETS: list[tuple[str, tuple[str, ...], float, Rule]] = [
    ("commands_per_s", ("commands_per_s",), 10_000, "≥"),
    ("latency p99 (ms)", ("latency_ms", "p99"), 50, "≤"),
    ("relay_events_per_s", ("relay_events_per_s",), 20_000, "≥"),
    ("rss_mb (peak, per process)", ("rss_mb",), 150, "≤"),
    ("members_per_s", ("members_per_s",), 100_000, "≥"),
    ("members add, big group / empty group", ("members_add_big_vs_empty",), 20, "±%"),
    ("commands_per_s, tracing on / off", ("tracing", "ratio_on_off"), 0.8, "≥"),
    ("client feed, events applied/s", ("client_feed_events_per_s",), 100_000, "≥"),
]
PREEXISTING_TOLERANCE_PCT = 10


def target_met(value: float, target: float, rule: Rule) -> bool:
    if rule == "≥":
        return value >= target
    if rule == "≤":
        return value <= target
    return abs(value - 1) * 100 <= target


def _target_cells(value: float, target: float, rule: Rule) -> tuple[str, str]:
    if rule == "±%":
        return f"{value:,.3f}", f"1 ± {target:.0f}%"
    if target < 10:
        return f"{value:,.3f}", f"{rule} {target:g}"
    return f"{value:,.1f}", f"{rule} {target:,.0f}"


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
    for name, path, target, rule in TARGETS:
        value = _lookup(f, path)
        if value is None:
            figures.add_row(name, "-", "", "skipped")
            continue
        shown, wanted = _target_cells(value, target, rule)
        verdict = "[green]met[/]" if target_met(value, target, rule) else "[red]missed[/]"
        figures.add_row(name, shown, wanted, verdict)
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
    _member_rows(f, figures)
    if client := f.get("client_send_many_commands_per_s"):
        figures.add_row(
            "client send_many commands/s",
            f"{client:,.0f}",
            "",
            f"{f['client_send_many_ratio']:.3f} of raw ({f['client_raw_commands_per_s']:,}/s)",
        )
    cpu = [
        (phase, value)
        for phase, value in (
            ("throughput", f.get("throughput", {}).get("service_cpu_cores")),
            ("latency", f.get("latency_service_cpu_cores")),
            ("relay", f.get("relay_service_cpu_cores")),
            ("members", f.get("members", {}).get("added", {}).get("service_cpu_cores")),
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
    if (peers := _peer_table(f)) is not None:
        console.print(peers)
    for problem in report.problems:
        console.print(f"[bold red]PROBLEM[/] {problem}", markup=True, highlight=False)


def _member_rows(f: dict[str, Any], figures: Table) -> None:
    """The members phase's figures that have no target of their own."""
    if (baseline := f.get("members_baseline_rows_per_s")) is not None:
        ratio = f.get("members_vs_baseline")
        note = f"members_per_s is {ratio:.3f} of it" if ratio is not None else ""
        figures.add_row("members baseline (rows/s)", f"{baseline:,.1f}", "", note)
    details = f.get("members", {})
    if (empty := f.get("members_add_empty_ms")) is not None:
        runs = details.get("add", {}).get("runs_ms", {}).get("empty", [])
        size = details.get("add", {}).get("big_group_members", 0)
        figures.add_row(
            "add 1,000 members (ms), empty / big",
            f"{empty:,.1f} / {f['members_add_big_ms']:,.1f}",
            "",
            f"medians of {len(runs)} each; big group of {size:,}",
        )
    if (result := f.get("members_delete_result_ms")) is not None:
        delete = details.get("delete", {})
        figures.add_row(
            "delete big group: result (ms) / purged (s)",
            f"{result:,.1f} / {f['members_purge_s']:,.2f}",
            "",
            f"{delete.get('group_members', 0):,} members; pruner every "
            f"{delete.get('purge_interval_s', 0):g} s",
        )
    if (quiet := f.get("members_load_quiet_p99_ms")) is not None:
        delete = details.get("delete", {})
        figures.add_row(
            "others' adds p99 (ms), alone / during delete",
            f"{quiet:,.1f} / {f['members_load_delete_p99_ms']:,.1f}",
            "",
            f"{delete.get('load_rate', 0):,}/s of {delete.get('load_ids_per_command', 0)} ids; "
            f"ratio {f['members_load_delete_vs_quiet']:.2f}",
        )


def _peer_table(figures: dict[str, Any]) -> Table | None:
    """The phase's figures side by side; None when it did not run."""
    if "peer_ours_events_per_s" not in figures:
        return None
    peer = figures.get("peer", {}).get("peer", "peer")
    result = Table(title=f"our relay and {peer} on the same database", title_justify="left")
    for column in ("figure", "ours", peer, "ours / " + peer):
        result.add_column(column, justify="left" if column == "figure" else "right")

    def cell(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    def ratio(name: str) -> str:
        return cell(figures.get(name), ".3f")

    result.add_row(
        f"drain events/s ({figures['peer']['backlog']:,} rows)",
        cell(figures.get("peer_ours_events_per_s"), ",.1f"),
        cell(figures.get("peer_debezium_events_per_s"), ",.1f"),
        ratio("peer_events_per_s_ratio"),
    )
    for name in ("cpu_cores", "rss_mb"):
        result.add_row(
            f"drain {name.replace('_', ' ')}",
            cell(figures.get(f"peer_ours_{name}"), ".2f" if name == "cpu_cores" else ",.1f"),
            cell(figures.get(f"peer_debezium_{name}"), ".2f" if name == "cpu_cores" else ",.1f"),
            "",
        )
    ours_ms = figures.get("peer_ours_latency_ms", {})
    theirs_ms = figures.get("peer_debezium_latency_ms", {})
    for q in ("p50", "p95", "p99", "max"):
        result.add_row(
            f"result to event {q} (ms) at {figures['peer']['latency_rate']:,}/s",
            cell(ours_ms.get(q), ",.1f"),
            cell(theirs_ms.get(q), ",.1f"),
            ratio("peer_p99_ratio") if q == "p99" else "",
        )
    return result
