"""`customer-groups chaos`'s arguments: parsed into ChaosOptions, run, and reported."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import orjson

from service.chaos.options import FAULTS, ChaosOptions
from service.chaos.runner import run_chaos
from service.config import Settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    chaos = subparsers.add_parser(
        "chaos",
        help="run several instances under load and injected faults, then check everything",
        description=(
            "Start --instances consumer+HTTP processes and --relays relay processes on a "
            "database and topics of their own, drive a steady mixed load over "
            "--organizations organizations, inject faults at seeded random times, then read "
            "back the results, events and state topics and the database and check them. "
            "Exit 1 when anything that must be zero is not."
        ),
    )
    defaults = ChaosOptions()
    chaos.add_argument("--seconds", type=float, default=defaults.seconds)
    chaos.add_argument("--instances", type=int, default=defaults.instances)
    chaos.add_argument("--relays", type=int, default=defaults.relays)
    chaos.add_argument("--organizations", type=int, default=defaults.organizations)
    chaos.add_argument("--rate", type=int, default=defaults.rate, help="commands per second")
    chaos.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"comma-separated kinds, default all: {', '.join(FAULTS)}",
    )
    chaos.add_argument("--each", type=int, default=defaults.each, help="faults of each kind")
    chaos.add_argument("--seed", type=int, default=defaults.seed)
    chaos.add_argument("--json", action="store_true", help="print one JSON object")
    chaos.set_defaults(handler=_chaos)


def _chaos(args: argparse.Namespace, settings: Settings) -> int:
    kinds = tuple(kind.strip() for kind in args.faults.split(",") if kind.strip())
    unknown = sorted(set(kinds) - set(FAULTS))
    if unknown:
        print(f"unknown fault kinds: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if args.instances < 1 or args.relays < 1 or args.rate < 1 or args.seconds <= 0:
        print("--instances, --relays, --rate and --seconds must be positive", file=sys.stderr)
        return 2
    options = ChaosOptions(
        seconds=args.seconds,
        instances=args.instances,
        relays=args.relays,
        organizations=args.organizations,
        rate=args.rate,
        faults=kinds,
        each=args.each,
        seed=args.seed,
    )
    logging.getLogger("service").setLevel(logging.WARNING)
    # The run's own clients retry through every broker restart it causes, by design.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    report = asyncio.run(run_chaos(options, settings, lambda m: print(m, file=sys.stderr)))
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for name, value in report.items():
            if name != "faults":
                print(f"{name}: {value}")
        for fault in report["faults"]:
            print(
                f"  {fault['kind']}: {fault['what']}; results again after "
                f"{fault['results_again_s']}s, events after {fault['events_again_s']}s"
            )
    return 0 if report["passed"] else 1
