"""`customer-groups outbox parked|retry|release`: events the relay set aside."""

from __future__ import annotations

import argparse

from service.config import Settings
from service.entrypoints.ops.cli import (
    Subparsers,
    common_options,
    emit,
    handler,
    say,
)
from service.ops import parked
from service.ops.common import (
    database,
)


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "outbox",
        help="events the relay set aside because Kafka cannot take them: list, retry, release",
        description=(
            "The relay parks an outbox row Kafka refuses for good (and the later rows of its "
            "group, which must not overtake it) and goes on with every other group."
        ),
    )
    actions = parser.add_subparsers(dest="outbox_action", required=True, metavar="ACTION")
    listing = actions.add_parser("parked", help="list parked rows, oldest first")
    listing.add_argument("--organization", action="append", default=[], help="repeatable")
    listing.add_argument("--group", action="append", default=[], help="repeatable")
    common_options(listing, writes=False)
    listing.set_defaults(handler=handler(_outbox_parked))
    again = actions.add_parser(
        "retry", help="put a group's parked rows back in line (e.g. after raising a limit)"
    )
    again.add_argument("--group", action="append", default=[], required=True, help="repeatable")
    common_options(again)
    again.set_defaults(handler=handler(_outbox_retry))
    release = actions.add_parser(
        "release",
        help="give up on parked events (never published); the rows behind them go on",
    )
    release.add_argument(
        "--event-id", action="append", default=[], required=True, help="repeatable"
    )
    common_options(release)
    release.set_defaults(handler=handler(_outbox_release))


async def _outbox_parked(args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings) as pool:
        rows = await parked.list_parked(pool, args.organization, args.group)
    if args.json:
        emit({"parked": [r.to_json() for r in rows]})
        return 0
    say(f"{len(rows)} parked outbox rows")
    for r in rows:
        say(
            f"  {r.event_id} {r.event_type} {r.organization_id}/{r.group_id} "
            f"v{r.group_version} ({r.payload_bytes} bytes) parked {r.parked_at}: {r.reason}"
        )
    return 0


async def _outbox_retry(args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings) as pool:
        count = await parked.retry(pool, args.group, dry_run=args.dry_run)
    if args.json:
        emit({"requeued": count, "dry_run": args.dry_run})
    else:
        say(f"{'would put' if args.dry_run else 'put'} {count} rows back in line")
    return 0


async def _outbox_release(args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings) as pool:
        count = await parked.release(pool, args.event_id, dry_run=args.dry_run)
    if args.json:
        emit({"released": len(args.event_id), "requeued": count, "dry_run": args.dry_run})
    else:
        verb = "would release" if args.dry_run else "released"
        say(f"{verb} {len(args.event_id)} events; {count} rows behind them back in line")
    return 0
