"""`customer-groups send`: one command and its result."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from service.config import Settings
from service.entrypoints.ops.cli import (
    Subparsers,
    common_options,
    emit,
    handler,
    say,
    say_json,
)
from service.ops import send
from service.ops.common import (
    OpsError,
)


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "send",
        help="send one command and print its result",
        description=(
            "Build a command from flags and/or a JSON file (flags win), send it to the command "
            "topic with a correlation_id header, and wait for its result. Exit code: 0 "
            "accepted, 1 rejected, 2 no result within --timeout."
        ),
    )
    parser.add_argument("--file", help="a JSON command (- for stdin)")
    parser.add_argument(
        "--type",
        choices=sorted(send.COMMAND_TYPES),
        help="group.create, group.update, group.delete, group.customers.add or"
        " group.customers.remove",
    )
    parser.add_argument("--organization", help="organization_id")
    parser.add_argument("--group", help="group_id")
    parser.add_argument("--name")
    parser.add_argument("--description")
    parser.add_argument("--platform-id")
    parser.add_argument(
        "--customer",
        action="append",
        metavar="CUSTOMER_ID",
        help="a customer id, for add-customers and remove-customers (repeatable)",
    )
    parser.add_argument("--expected-version", type=int)
    parser.add_argument("--command-id", help="default: a new UUID")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the result (default 10)",
    )
    common_options(parser)
    parser.set_defaults(handler=handler(_send))


def _send(args: argparse.Namespace, settings: Settings) -> Coroutine[Any, Any, int]:
    return _send_and_print(args, settings, _command(args))


def _command(args: argparse.Namespace) -> dict[str, Any]:
    base = None
    if args.file:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        try:
            base = json.loads(text)
        except json.JSONDecodeError as error:
            raise OpsError(f"{args.file} is not JSON: {error}") from None
        if not isinstance(base, dict):
            raise OpsError(f"{args.file} must hold one JSON object")
    return send.build_command(
        base,
        type=args.type,
        organization_id=args.organization,
        group_id=args.group,
        name=args.name,
        description=args.description,
        platform_id=args.platform_id,
        customer_ids=args.customer,
        expected_version=args.expected_version,
        command_id=args.command_id,
    )


async def _send_and_print(
    args: argparse.Namespace, settings: Settings, command: dict[str, Any]
) -> int:
    outcome = await send.send_command(settings, command, wait_s=args.timeout, dry_run=args.dry_run)
    if args.json:
        emit(outcome.to_json())
    elif outcome.dry_run:
        say("dry run, not sent:")
        say_json(command)
    elif outcome.result is None:
        say(
            f"no result for command {command['command_id']} within {args.timeout:g}s; "
            "is the service running? (see `customer-groups tail results`)",
            err=True,
        )
    else:
        result = outcome.result
        summary = f"{result.get('status')} {result.get('code')}"
        if result.get("error"):
            summary += f": {result['error']}"
        say(f"{summary} (command {command['command_id']})")
        say_json(result)
    return outcome.exit_code
