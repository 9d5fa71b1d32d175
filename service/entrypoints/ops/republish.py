"""`customer-groups republish`: publish stored events again, with their ids."""

from __future__ import annotations

import argparse
from datetime import datetime

from service.config import Settings
from service.entrypoints.ops.cli import (
    TIME_HELP,
    Subparsers,
    common_options,
    emit,
    event_type_arg,
    handler,
    progress_of,
    say,
    time_arg,
)
from service.ops import republish
from service.ops.common import (
    OpsError,
    iso,
)


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "republish",
        help="re-publish stored events from the outbox, with their original ce_id",
        description=(
            "Publish stored outbox events again, unchanged (same key, headers and ce_id), "
            "in their original order. Filters combine with AND; repeat one to match any "
            "of its values. Published events are kept for OUTBOX_RETENTION_DAYS; a --since "
            "older than that is refused."
        ),
    )
    parser.add_argument(
        "--organization", action="append", default=[], metavar="ORG", help="(repeatable)"
    )
    parser.add_argument(
        "--group", action="append", default=[], metavar="GROUP_ID", help="(repeatable)"
    )
    parser.add_argument(
        "--type",
        type=event_type_arg,
        action="append",
        default=[],
        help="created, updated, deleted, customers_added or customers_removed, or"
        " group.created, ... (repeatable)",
    )
    parser.add_argument(
        "--since", type=time_arg, help=f"events that occurred at or after: {TIME_HELP}"
    )
    parser.add_argument("--until", type=time_arg, help="events that occurred before this time")
    parser.add_argument("--to-topic", help="publish here instead of the events topic")
    parser.add_argument(
        "--all", action="store_true", help="with no filter: every stored event (else refused)"
    )
    common_options(parser)
    parser.set_defaults(handler=handler(_republish))


async def _republish(args: argparse.Namespace, settings: Settings) -> int:
    selection = republish.EventFilter(
        args.organization, args.group, args.type, args.since, args.until
    )
    if selection.matches_everything and not (args.all or args.dry_run):
        raise OpsError(
            "refusing: with no filter, every stored event would be published again. Give "
            "--organization, --group, --type, --since or --until, or --all (--dry-run shows "
            "how many)."
        )
    outcome = await republish.republish(
        settings,
        selection,
        to_topic=args.to_topic,
        dry_run=args.dry_run,
        progress=progress_of(args),
    )
    if args.json:
        emit(outcome.to_json())
        return 0
    types = ", ".join(f"{name}: {count}" for name, count in outcome.by_type.items())
    span = f", occurred {_at(outcome.first)} to {_at(outcome.last)}" if outcome.matched else ""
    if outcome.dry_run:
        say(f"dry run: {outcome.matched} events would go to {outcome.topic} ({types}){span}")
    else:
        say(f"re-published {outcome.published} events to {outcome.topic} ({types}){span}")
    return 0


def _at(moment: datetime | None) -> str:
    return iso(moment) or "-"
