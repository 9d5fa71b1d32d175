"""`customer-groups replay`: re-consume the command topic."""

from __future__ import annotations

import argparse

from service.config import Settings
from service.entrypoints.ops.cli import (
    TIME_HELP,
    Subparsers,
    common_options,
    emit,
    handler,
    partition_offset_arg,
    progress_of,
    say,
    time_arg,
)
from service.ops import replay, replay_reset


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="re-consume the command topic from a time or an offset",
        description=(
            "Re-consume the command topic. A command applied before is not applied again "
            "(its stored result is re-sent; no change, no event). --mode oneoff (default) "
            "applies the range with its own consumer, alongside a running service, up to the "
            "service's committed offsets, and counts outcomes. --mode reset moves the "
            "service's consumer-group offsets back instead; Kafka allows that only while the "
            "group has no members (stop the service first)."
        ),
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--since", type=time_arg, help=f"from this time: {TIME_HELP}")
    where.add_argument(
        "--from-offset",
        type=partition_offset_arg,
        action="append",
        metavar="P:O",
        help="from offset O of partition P (repeatable; other partitions are left out)",
    )
    where.add_argument(
        "--from-beginning", action="store_true", help="from the oldest command Kafka still has"
    )
    parser.add_argument(
        "--mode",
        choices=("oneoff", "reset"),
        default="oneoff",
        help="oneoff: apply here, alongside the service (default); reset: move the "
        "service's offsets back",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="reset: wait up to this long for the group to become empty",
    )
    parser.add_argument(
        "--beyond-retention",
        action="store_true",
        help="allow commands older than the processed-command retention (may apply them again)",
    )
    common_options(parser)
    parser.set_defaults(handler=handler(_replay))


async def _replay(args: argparse.Namespace, settings: Settings) -> int:
    start = replay.Start(since=args.since, offsets=dict(args.from_offset or []))
    if args.mode == "reset":
        reset = await replay_reset.reset_offsets(
            settings,
            start,
            dry_run=args.dry_run,
            wait_s=args.wait,
            beyond_retention=args.beyond_retention,
        )
        _print_reset(args, reset)
        return 0
    outcome = await replay.replay_oneoff(
        settings,
        start,
        dry_run=args.dry_run,
        beyond_retention=args.beyond_retention,
        progress=progress_of(args),
    )
    if args.json:
        emit(outcome.to_json())
        return 0
    ranges = ", ".join(f"{p['partition']}:{p['start']}-{p['end']}" for p in outcome.span.to_json())
    t = outcome.tally
    say(f"one-off replay of {outcome.topic} (partition:from-to {ranges or 'none'})")
    if outcome.dry_run:
        say(
            f"dry run, {t.records} records: {t.already_done} already done, {t.pending} not "
            f"applied yet, {t.invalid} malformed; nothing was applied or sent"
        )
    else:
        say(
            f"{t.records} records: {t.reapplied} re-applied, {t.already_done} already done, "
            f"{t.rejected} rejected, {t.invalid} malformed (skipped: already in the DLQ), "
            f"{t.failed} failed (dead-lettered)"
        )
    if outcome.left_to_service:
        say(
            f"{outcome.left_to_service} later records are not consumed by the service yet; "
            "it applies them itself, in order"
        )
    return 0


def _print_reset(args: argparse.Namespace, outcome: replay_reset.ResetOutcome) -> None:
    if args.json:
        emit(outcome.to_json())
        return
    say(f"consumer group {outcome.group} on {outcome.topic}:")
    for p in outcome.partitions:
        if p.replayed:
            say(f"  partition {p.partition}: {p.committed} -> {p.target} ({p.replayed} again)")
        else:
            committed = "nothing committed" if p.committed is None else p.committed
            say(f"  partition {p.partition}: {committed}, unchanged")
    verb = "would re-consume" if outcome.dry_run else "will re-consume"
    say(f"the service {verb} {outcome.replayed} commands")
    if outcome.dry_run:
        say("dry run: no offsets were moved")
        if outcome.members:
            say(
                f"note: the group has {len(outcome.members)} active member(s) "
                f"({', '.join(outcome.members)}); a reset is refused until it is empty"
            )
