"""`customer-groups dlq list|redrive`: the dead-letter topic."""

from __future__ import annotations

import argparse

from service.config import Settings
from service.entrypoints.ops.cli import (
    TIME_HELP,
    Subparsers,
    at_least,
    common_options,
    emit,
    handler,
    progress_of,
    say,
    time_arg,
)
from service.ops import dlq


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "dlq",
        help="inspect the dead-letter topic, or send messages back to the command topic",
        description="Inspect the dead-letter topic (list) or redrive messages from it.",
    )
    actions = parser.add_subparsers(dest="dlq_action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        help="count dead letters by reason and show the latest",
        description="Count the dead letters matching the filters, by reason, with a sample.",
    )
    _dlq_filters(listing)
    common_options(listing, writes=False)
    listing.set_defaults(handler=handler(_dlq_list))
    again = actions.add_parser(
        "redrive",
        help="send matching dead letters back to the command topic (e.g. after a fix)",
        description=(
            "Send matching dead letters back to the command topic with their original key, "
            "value and headers (minus dlq_*). Messages that are still malformed are skipped. "
            "Safe to repeat: the service applies a command_id once."
        ),
    )
    _dlq_filters(again)
    again.add_argument("--limit", type=at_least(1), help="send at most this many")
    common_options(again)
    again.set_defaults(handler=handler(_dlq_redrive))


def _dlq_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason",
        action="append",
        default=[],
        help="only this dlq_reason (repeatable): not_json, not_object, empty, too_large, "
        "invalid_schema, processing_failed",
    )
    parser.add_argument("--since", type=time_arg, help=f"dead-lettered at or after: {TIME_HELP}")
    parser.add_argument("--until", type=time_arg, help="dead-lettered before this time")
    parser.add_argument(
        "--sample", type=at_least(0), default=5, help="how many to show (default 5)"
    )


def _dlq_selection(args: argparse.Namespace) -> dlq.DeadLetterFilter:
    return dlq.DeadLetterFilter(args.reason, args.since, args.until)


async def _dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    report = await dlq.list_dead_letters(
        settings, _dlq_selection(args), sample=args.sample, progress=progress_of(args)
    )
    if args.json:
        emit({k: v for k, v in report.to_json().items() if k not in ("sent", "dry_run")})
        return 0
    say(f"{report.matched} dead letters in {report.topic}")
    for reason, count in report.reasons.most_common():
        say(f"  {reason}: {count}")
    _print_sample(report)
    return 0


async def _dlq_redrive(args: argparse.Namespace, settings: Settings) -> int:
    report = await dlq.redrive(
        settings,
        _dlq_selection(args),
        dry_run=args.dry_run,
        limit=args.limit,
        sample=args.sample,
        progress=progress_of(args),
    )
    if args.json:
        emit(report.to_json())
        return 0
    reasons = ", ".join(f"{r}: {n}" for r, n in report.reasons.most_common())
    reasons = f" ({reasons})" if reasons else ""
    if report.dry_run:
        say(f"dry run: {report.matched} dead letters would be sent back{reasons}")
    else:
        say(f"sent {report.sent} dead letters back to {settings.topic_commands}{reasons}")
    if report.still_malformed:
        skipped = ", ".join(f"{r}: {n}" for r, n in report.still_malformed.items())
        say(f"skipped {report.still_malformed.total()} still malformed ({skipped})")
    _print_sample(report)
    return 0


def _print_sample(report: dlq.DeadLetterReport) -> None:
    if not report.sample:
        return
    say("latest:")
    for item in report.sample:
        say(
            f"  {item['partition']}:{item['offset']} {item['time']} {item['reason']}: "
            f"{item['error']} (from {item['source']}) key={item['key']} value={item['value']}"
        )
