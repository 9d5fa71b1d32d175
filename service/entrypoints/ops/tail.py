"""`customer-groups tail`: follow one of the service's topics."""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading

from service.adapters.kafka import Record
from service.config import Settings
from service.entrypoints.ops.cli import (
    Subparsers,
    at_least,
    emit,
    handler,
    say,
)
from service.ops import tail


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "tail",
        help="follow events, results, the DLQ or the state topic",
        description=(
            "Print new messages of a topic as they arrive (all of them with --from-beginning) "
            "until Ctrl-C, --limit or --timeout. Reads outside any consumer group."
        ),
    )
    parser.add_argument("topic", choices=tail.KINDS, help="which topic to follow")
    parser.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest message, not the end"
    )
    parser.add_argument("--limit", type=at_least(1), help="stop after this many messages")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="stop after this long without a new message",
    )
    parser.add_argument("--organization", help="only this organization's messages")
    parser.add_argument("--json", action="store_true", help="JSON lines, one per message")
    parser.set_defaults(handler=handler(_tail))


async def _tail(args: argparse.Namespace, settings: Settings) -> int:
    def show(record: Record) -> None:
        if args.json:
            emit(tail.as_json(record))
        else:
            say(tail.render(args.topic, record))

    # Ctrl-C ends the loop between polls, so the consumer closes cleanly. Signal handlers
    # can only be set from the main thread (not so when main() runs in a test's thread).
    stop = asyncio.Event()
    if threading.current_thread() is threading.main_thread():
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    await tail.tail(
        settings,
        args.topic,
        show,
        from_beginning=args.from_beginning,
        limit=args.limit,
        idle_timeout=args.timeout,
        organization=args.organization,
        stop=stop,
    )
    return 0
