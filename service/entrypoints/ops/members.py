"""`customer-groups members import|export`: a group's customers in bulk."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from service.config import Settings
from service.domain.commands import CUSTOMER_IDS_MAX
from service.entrypoints.ops.cli import (
    Subparsers,
    at_least,
    common_options,
    emit,
    handler,
    progress_of,
    say,
)
from service.escaping import printable
from service.ops import members, members_export
from service.ops.common import OpsError


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "members",
        help="import a group's customers from a file, or export them",
        description="Add the customer ids of a file to a group (import), or list its members.",
    )
    actions = parser.add_subparsers(dest="members_action", required=True, metavar="ACTION")
    importing = actions.add_parser(
        "import",
        help="add the customer ids of a file to a group",
        description=(
            "Send the ids of FILE (one a line, or a CSV column with --column) as "
            "group.customers.add commands and wait for their results. Lines that are not "
            "valid ids are reported by line number and not sent. Command ids are derived "
            "from the file, the group and the chunk, so running the same import again (after "
            "an interruption) applies nothing twice. Exit code: 0 every id in, 1 bad lines "
            "or a rejection, 2 a result not in time (run it again)."
        ),
    )
    _target(importing)
    importing.add_argument("file", metavar="FILE", help="the ids (- for stdin)")
    importing.add_argument(
        "--column", metavar="NAME", help="FILE is CSV with a header; take the ids from NAME"
    )
    importing.add_argument(
        "--chunk-size",
        type=at_least(1),
        default=CUSTOMER_IDS_MAX,
        metavar="N",
        help=f"ids per command, at most {CUSTOMER_IDS_MAX:,} (the default); keep it the same "
        "when running an import again",
    )
    importing.add_argument(
        "--in-flight",
        type=at_least(1),
        default=members.DEFAULT_IN_FLIGHT,
        metavar="N",
        help=f"commands sent ahead of their results (default {members.DEFAULT_IN_FLIGHT})",
    )
    importing.add_argument(
        "--timeout",
        type=float,
        default=members.DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long to wait for a result (default {members.DEFAULT_TIMEOUT_S:g})",
    )
    common_options(importing)
    importing.set_defaults(handler=handler(_import))
    exporting = actions.add_parser(
        "export",
        help="write a group's customer ids, one a line, in order",
        description=(
            "Write the customer ids of a live group, one a line, ordered by id, read from "
            "PostgreSQL. With --output the file appears only once complete."
        ),
    )
    _target(exporting)
    exporting.add_argument("--output", metavar="FILE", help="write here instead of stdout")
    common_options(exporting, writes=False)
    exporting.set_defaults(handler=handler(_export))


def _target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--organization", required=True, metavar="ORG", help="organization_id")
    parser.add_argument("--group", required=True, metavar="ID", help="the group's id")


async def _import(args: argparse.Namespace, settings: Settings) -> int:
    if args.chunk_size > CUSTOMER_IDS_MAX:
        raise OpsError(f"--chunk-size takes at most {CUSTOMER_IDS_MAX} ids")
    read = sys.stdin.buffer.read if args.file == "-" else Path(args.file).read_bytes
    try:
        data = await asyncio.to_thread(read)
    except OSError as error:
        raise OpsError(f"cannot read {args.file}: {error.strerror}") from None
    outcome = await members.import_members(
        settings,
        args.organization,
        args.group,
        data,
        column=args.column,
        chunk_size=args.chunk_size,
        in_flight=args.in_flight,
        timeout_s=args.timeout,
        dry_run=args.dry_run,
        progress=progress_of(args),
    )
    if args.json:
        emit(outcome.to_json())
    else:
        _say_import(outcome, args.timeout)
    return outcome.exit_code


def _say_import(outcome: members.ImportOutcome, timeout: float) -> None:
    found = outcome.scan
    for bad in found.bad_sample:
        say(f"line {bad.line}: {bad.problem}" + (f": {bad.text}" if bad.text else ""), err=True)
    if found.bad_lines > len(found.bad_sample):
        say(f"… and {found.bad_lines - len(found.bad_sample)} more bad lines", err=True)
    target = f"group {outcome.group_id} of {outcome.organization}"
    if outcome.dry_run:
        say(
            f"dry run, nothing sent: {found.ids} ids in {outcome.commands} commands for {target}"
            f" (now {outcome.customer_count} customers); {found.bad_lines} bad lines"
        )
        return
    say(
        f"{outcome.added} added, {outcome.unchanged} unchanged, {outcome.rejected} rejected,"
        f" {outcome.not_sent} not sent; {found.bad_lines} bad lines skipped"
        f" ({outcome.answered} of {outcome.commands} commands answered; {target} has"
        f" {outcome.customer_count} customers)"
    )
    for rejection in outcome.rejections:
        say(f"command {rejection.command} rejected: {rejection.code} {rejection.error}", err=True)
    if outcome.timed_out:
        say(
            f"{outcome.timed_out} commands had no result within {timeout:g}s; is the service"
            " running? Run the same import again to finish it: nothing is applied twice.",
            err=True,
        )


async def _export(args: argparse.Namespace, settings: Settings) -> int:
    if args.json and not args.output:
        raise OpsError("--json prints a summary, so the ids need --output FILE")
    progress = progress_of(args)
    if args.output:
        with members_export.file_writer(Path(args.output)) as write:
            count = await members_export.export_members(
                settings, args.organization, args.group, write, progress=progress
            )
    else:
        count = await members_export.export_members(
            settings, args.organization, args.group, _stdout_writer(), progress=progress
        )
    if args.json:
        emit(
            {
                "organization_id": args.organization,
                "group_id": args.group,
                "exported": count,
                "output": args.output,
            }
        )
    elif args.output:
        say(f"exported {count} customer ids to {args.output}")
    return 0


def _stdout_writer() -> members_export.Write:
    # Ids may hold bidirectional controls and the like: harmless in a file or a pipe,
    # where the ids must stay byte for byte, but not on a terminal.
    shown = printable if sys.stdout.isatty() else str

    def write(ids: Sequence[str]) -> None:
        sys.stdout.write("".join(f"{shown(customer_id)}\n" for customer_id in ids))
        sys.stdout.flush()

    return write
