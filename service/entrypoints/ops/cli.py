"""What every ops subcommand shares: argument types, the handler that runs it, and output.

Every tool prints a human summary, or one JSON object with --json (tail: JSON lines).
Exit codes: 0 done, 1 refused or failed (the message says why); send: 2 on no result."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
import orjson
from aiokafka.errors import KafkaError

from service.config import Settings
from service.escaping import printable, printable_json
from service.ops import republish
from service.ops.common import (
    OpsError,
    Progress,
    parse_partition_offset,
    parse_time,
)

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


Run = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


TIME_HELP = "a duration ago (30m, 2h, 7d) or an ISO 8601 time (2026-11-20T10:00Z; UTC if no zone)"


def time_arg(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def partition_offset_arg(text: str) -> tuple[int, int]:
    try:
        return parse_partition_offset(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def event_type_arg(text: str) -> str:
    try:
        return republish.event_type(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


def handler(run: Run) -> Callable[[argparse.Namespace, Settings], int]:
    def handle(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return asyncio.run(run(args, settings))
        except OpsError as error:
            return failed(args, str(error))
        except KafkaError as error:
            where = settings.kafka_bootstrap_servers
            return failed(args, f"Kafka ({where}) failed: {error!r}")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
            return failed(args, f"PostgreSQL (DATABASE_URL) or the network failed: {error!r}")
        except KeyboardInterrupt:
            return 130

    return handle


def failed(args: argparse.Namespace, message: str) -> int:
    if args.json:
        emit({"error": message})
    else:
        say(f"error: {message}", err=True)
    return 1


def emit(data: dict[str, Any]) -> None:
    print(printable_json(orjson.dumps(data).decode()), flush=True)


def say(line: str, *, err: bool = False) -> None:
    """Print one line. What it quotes (dead letters, results, group names, topics) can hold
    anyone's bytes, so nothing in it may reach the terminal as a control."""
    print(printable(line), file=sys.stderr if err else sys.stdout, flush=True)


def say_json(data: Any) -> None:
    # json.dumps escapes the newlines in strings: every line it writes is one of its own.
    for line in json.dumps(data, indent=2, ensure_ascii=False).split("\n"):
        print(printable_json(line), flush=True)


def progress_of(args: argparse.Namespace) -> Progress:
    return Progress(enabled=not args.json and sys.stderr.isatty())


def common_options(parser: argparse.ArgumentParser, *, writes: bool = True) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object, no progress")
    if writes:
        parser.add_argument(
            "--dry-run", action="store_true", help="show what would be done; write nothing"
        )
