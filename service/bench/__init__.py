"""`customer-groups bench`: the service's throughput, latency, relay rate and memory, next to
what raw PostgreSQL and Kafka do on the same machine in the same run."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import replace
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from service.bench.options import PHASES, BenchOptions, Report
from service.bench.runner import run_bench
from service.config import Settings

# (figure, how to read it from the report, target, True when higher is better)
TARGETS: list[tuple[str, tuple[str, ...], float, bool]] = [
    ("commands_per_s", ("commands_per_s",), 10_000, True),
    ("latency p99 (ms)", ("latency_ms", "p99"), 50, False),
    ("relay_events_per_s", ("relay_events_per_s",), 20_000, True),
    ("rss_mb (peak, per process)", ("rss_mb",), 150, False),
]
PREEXISTING_TOLERANCE_PCT = 10


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="benchmark the service on the local Kafka and PostgreSQL",
        description=(
            "Start the service as a separate process on a database and topics of the bench's "
            "own, drive it with commands and print its figures next to raw PostgreSQL and "
            "Kafka baselines measured in the same run."
        ),
    )
    defaults = BenchOptions()
    bench.add_argument("--commands", type=int, help=f"default {defaults.commands:,}")
    bench.add_argument("--organizations", type=int, help=f"default {defaults.organizations}")
    bench.add_argument("--rate", type=int, help=f"latency offered rate/s, default {defaults.rate}")
    bench.add_argument(
        "--latency-seconds", type=float, help=f"default {defaults.latency_seconds:g}"
    )
    bench.add_argument(
        "--relay-backlog", type=int, help=f"outbox rows, default {defaults.relay_backlog:,}"
    )
    bench.add_argument(
        "--preload",
        type=int,
        help="groups in the table before the throughput run; above 1,000 it runs four "
        "times, with 1,000, this many (twice) and 1,000 again, and compares the means",
    )
    bench.add_argument(
        "--baseline-seconds",
        type=float,
        help=f"time cap of each one-transaction-per-command baseline, default "
        f"{defaults.baseline_seconds:g}",
    )
    bench.add_argument(
        "--instances",
        type=int,
        help="service processes sharing the command partitions (one relay leads), default "
        f"{defaults.instances}",
    )
    bench.add_argument(
        "--relay-process",
        action="store_true",
        help="run the relay in a process of its own; the --instances processes run the "
        "consumer and the HTTP API",
    )
    bench.add_argument(
        "--external",
        action="store_true",
        help="drive the service already running with this environment's settings "
        "(no relay phase, no preload, no memory figure)",
    )
    bench.add_argument("--skip", action="append", choices=PHASES, default=[], help="repeatable")
    bench.add_argument("--smoke", action="store_true", help="tiny sizes: checks the path only")
    bench.add_argument("--keep", action="store_true", help="keep the bench database and topics")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(handler=_bench)


def options_from(args: argparse.Namespace) -> BenchOptions:
    options = BenchOptions.smoke() if args.smoke else BenchOptions()
    given = {
        name: getattr(args, name)
        for name in (
            "commands",
            "organizations",
            "rate",
            "latency_seconds",
            "relay_backlog",
            "preload",
            "baseline_seconds",
            "instances",
        )
        if getattr(args, name) is not None
    }
    return replace(
        options,
        **given,
        relay_process=args.relay_process,
        external=args.external,
        keep=args.keep,
        skip=frozenset(args.skip),
    )


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    options = options_from(args)
    if options.external and options.preload:
        print("--preload needs the bench's own database; not with --external", file=sys.stderr)
        return 2
    if options.instances < 1:
        print("--instances must be at least 1", file=sys.stderr)
        return 2

    logging.getLogger("service").setLevel(logging.WARNING)

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report = asyncio.run(run_bench(options, settings, progress))
    if args.json:
        sys.stdout.write(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        print_table(report)
    return 1 if report.problems else 0


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
