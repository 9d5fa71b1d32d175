"""`customer-groups rebuild-state`: the compacted state topic from the database."""

from __future__ import annotations

import argparse

from service.config import Settings
from service.entrypoints.ops.cli import (
    Subparsers,
    common_options,
    emit,
    handler,
    progress_of,
    say,
)
from service.ops import state


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "rebuild-state",
        help="publish every live group (and recent tombstones) to the compacted state topic",
        description=(
            "Publish the current JSON of every live group to the state topic, keyed by group "
            "id, and a tombstone for each group deleted within OUTBOX_RETENTION_DAYS (all "
            "deleted groups with --all-tombstones). Groups changing meanwhile are published "
            "again at the end, so the topic ends current even while the service runs."
        ),
    )
    parser.add_argument(
        "--organization",
        action="append",
        default=[],
        metavar="ORG",
        help="only this organization's groups (repeatable)",
    )
    parser.add_argument("--to-topic", help="publish here instead of the state topic")
    parser.add_argument(
        "--all-tombstones",
        action="store_true",
        help="a tombstone for every deleted group, however long ago",
    )
    common_options(parser)
    parser.set_defaults(handler=handler(_rebuild_state))


async def _rebuild_state(args: argparse.Namespace, settings: Settings) -> int:
    outcome = await state.rebuild_state(
        settings,
        organizations=args.organization,
        to_topic=args.to_topic,
        all_tombstones=args.all_tombstones,
        dry_run=args.dry_run,
        progress=progress_of(args),
    )
    if args.json:
        emit(outcome.to_json())
    elif outcome.dry_run:
        say(
            f"dry run: {outcome.live} live groups and {outcome.tombstones} tombstones "
            f"would go to {outcome.topic}"
        )
    else:
        say(
            f"published {outcome.live} live groups and {outcome.tombstones} tombstones to "
            f"{outcome.topic}; {outcome.caught_up} published again after changing meanwhile"
        )
    return 0
