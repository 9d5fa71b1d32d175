"""`customer-groups bench`'s arguments: parsed into BenchOptions, run, and printed."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import fields, replace

import orjson

from service.bench.options import PEERS, PHASES, BenchOptions
from service.bench.runner import run_bench
from service.bench.table import print_table
from service.config import Settings


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
        "--members",
        type=int,
        help=f"memberships the members phase adds, 1,000 per command, default {defaults.members:,}",
    )
    bench.add_argument(
        "--big-group",
        type=int,
        help="members of the group that adding to is compared with an empty one's, and "
        f"that is then deleted, default {defaults.big_group:,}",
    )
    bench.add_argument(
        "--client-commands",
        type=int,
        help="commands the client phase sends raw, then through the Python client's "
        f"send_many, default {defaults.client_commands:,}",
    )
    bench.add_argument(
        "--feed-groups",
        type=int,
        help="groups whose ten events each the client phase's feed applies, default "
        f"{defaults.feed_groups:,}",
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
        "(no relay or members phase, no preload, no memory figure)",
    )
    bench.add_argument("--skip", action="append", choices=PHASES, default=[], help="repeatable")
    bench.add_argument(
        "--peer",
        choices=PEERS,
        help="also compare our relay with this one on the same database (starts it with "
        "deploy/local/debezium.sh); --skip the other phases to run it alone",
    )
    bench.add_argument("--smoke", action="store_true", help="tiny sizes: checks the path only")
    bench.add_argument("--keep", action="store_true", help="keep the bench database and topics")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(handler=_bench)


def options_from(args: argparse.Namespace) -> BenchOptions:
    """Each of BenchOptions' fields is the argument of the same name; one not given keeps
    its default (its --smoke default with --smoke)."""
    options = BenchOptions.smoke() if args.smoke else BenchOptions()
    given = {
        f.name: getattr(args, f.name)
        for f in fields(BenchOptions)
        if getattr(args, f.name) is not None
    }
    return replace(options, **given | {"skip": frozenset(args.skip)})


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    options = options_from(args)
    if options.external and options.preload:
        print("--preload needs the bench's own database; not with --external", file=sys.stderr)
        return 2
    if options.instances < 1:
        print("--instances must be at least 1", file=sys.stderr)
        return 2
    if min(options.members, options.big_group, options.client_commands, options.feed_groups) < 1:
        print(
            "--members, --big-group, --client-commands and --feed-groups must be at least 1",
            file=sys.stderr,
        )
        return 2
    if options.external and options.peer:
        print("--peer needs the bench's own topics; not with --external", file=sys.stderr)
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
