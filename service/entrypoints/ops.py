"""The operations subcommands of `customer-groups`: parse arguments, call service.ops, print.

Every tool prints a human summary, or one JSON object with --json (tail: JSON lines).
Exit codes: 0 done, 1 refused or failed (the message says why); send: 2 on no result."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
import orjson
from aiokafka.errors import KafkaError

from service.config import Settings
from service.ops import dlq, parked, replay, republish, send, state, tail
from service.ops.common import (
    OpsError,
    Progress,
    Record,
    database,
    iso,
    parse_partition_offset,
    parse_time,
    printable,
    printable_json,
)

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Run = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]

TIME_HELP = "a duration ago (30m, 2h, 7d) or an ISO 8601 time (2026-11-20T10:00Z; UTC if no zone)"


def _time(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _partition_offset(text: str) -> tuple[int, int]:
    try:
        return parse_partition_offset(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _event_type(text: str) -> str:
    try:
        return republish.event_type(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


def _handler(run: Run) -> Callable[[argparse.Namespace, Settings], int]:
    def handle(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return asyncio.run(run(args, settings))
        except OpsError as error:
            return _failed(args, str(error))
        except KafkaError as error:
            where = settings.kafka_bootstrap_servers
            return _failed(args, f"Kafka ({where}) failed: {error!r}")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
            return _failed(args, f"PostgreSQL (DATABASE_URL) or the network failed: {error!r}")
        except KeyboardInterrupt:
            return 130

    return handle


def _failed(args: argparse.Namespace, message: str) -> int:
    if args.json:
        _emit({"error": message})
    else:
        _say(f"error: {message}", err=True)
    return 1


def _emit(data: dict[str, Any]) -> None:
    print(printable_json(orjson.dumps(data).decode()), flush=True)


def _say(line: str, *, err: bool = False) -> None:
    """Print one line. What it quotes (dead letters, results, group names, topics) can hold
    anyone's bytes, so nothing in it may reach the terminal as a control."""
    print(printable(line), file=sys.stderr if err else sys.stdout, flush=True)


def _say_json(data: Any) -> None:
    # json.dumps escapes the newlines in strings: every line it writes is one of its own.
    for line in json.dumps(data, indent=2, ensure_ascii=False).split("\n"):
        print(printable_json(line), flush=True)


def _progress(args: argparse.Namespace) -> Progress:
    return Progress(enabled=not args.json and sys.stderr.isatty())


def _common(parser: argparse.ArgumentParser, *, writes: bool = True) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object, no progress")
    if writes:
        parser.add_argument(
            "--dry-run", action="store_true", help="show what would be done; write nothing"
        )


def register(subparsers: Subparsers) -> None:
    _register_replay(subparsers)
    _register_republish(subparsers)
    _register_rebuild_state(subparsers)
    _register_dlq(subparsers)
    _register_send(subparsers)
    _register_tail(subparsers)
    _register_outbox(subparsers)


# --- outbox (parked rows) ---------------------------------------------------------------


def _register_outbox(subparsers: Subparsers) -> None:
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
    _common(listing, writes=False)
    listing.set_defaults(handler=_handler(_outbox_parked))
    again = actions.add_parser(
        "retry", help="put a group's parked rows back in line (e.g. after raising a limit)"
    )
    again.add_argument("--group", action="append", default=[], required=True, help="repeatable")
    _common(again)
    again.set_defaults(handler=_handler(_outbox_retry))
    release = actions.add_parser(
        "release",
        help="give up on parked events (never published); the rows behind them go on",
    )
    release.add_argument(
        "--event-id", action="append", default=[], required=True, help="repeatable"
    )
    _common(release)
    release.set_defaults(handler=_handler(_outbox_release))


async def _outbox_parked(args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings) as pool:
        rows = await parked.list_parked(pool, args.organization, args.group)
    if args.json:
        _emit({"parked": [r.to_json() for r in rows]})
        return 0
    _say(f"{len(rows)} parked outbox rows")
    for r in rows:
        _say(
            f"  {r.event_id} {r.event_type} {r.organization_id}/{r.group_id} "
            f"v{r.group_version} ({r.payload_bytes} bytes) parked {r.parked_at}: {r.reason}"
        )
    return 0


async def _outbox_retry(args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings) as pool:
        count = await parked.retry(pool, args.group, dry_run=args.dry_run)
    if args.json:
        _emit({"requeued": count, "dry_run": args.dry_run})
    else:
        _say(f"{'would put' if args.dry_run else 'put'} {count} rows back in line")
    return 0


async def _outbox_release(args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings) as pool:
        count = await parked.release(pool, args.event_id, dry_run=args.dry_run)
    if args.json:
        _emit({"released": len(args.event_id), "requeued": count, "dry_run": args.dry_run})
    else:
        verb = "would release" if args.dry_run else "released"
        _say(f"{verb} {len(args.event_id)} events; {count} rows behind them back in line")
    return 0


# --- replay ---------------------------------------------------------------------------


def _register_replay(subparsers: Subparsers) -> None:
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
    where.add_argument("--since", type=_time, help=f"from this time: {TIME_HELP}")
    where.add_argument(
        "--from-offset",
        type=_partition_offset,
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
    _common(parser)
    parser.set_defaults(handler=_handler(_replay))


async def _replay(args: argparse.Namespace, settings: Settings) -> int:
    start = replay.Start(since=args.since, offsets=dict(args.from_offset or []))
    if args.mode == "reset":
        reset = await replay.reset_offsets(
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
        progress=_progress(args),
    )
    if args.json:
        _emit(outcome.to_json())
        return 0
    ranges = ", ".join(f"{p['partition']}:{p['start']}-{p['end']}" for p in outcome.span.to_json())
    t = outcome.tally
    _say(f"one-off replay of {outcome.topic} (partition:from-to {ranges or 'none'})")
    if outcome.dry_run:
        _say(
            f"dry run, {t.records} records: {t.already_done} already done, {t.pending} not "
            f"applied yet, {t.invalid} malformed; nothing was applied or sent"
        )
    else:
        _say(
            f"{t.records} records: {t.reapplied} re-applied, {t.already_done} already done, "
            f"{t.rejected} rejected, {t.invalid} malformed (skipped: already in the DLQ), "
            f"{t.failed} failed (dead-lettered)"
        )
    if outcome.left_to_service:
        _say(
            f"{outcome.left_to_service} later records are not consumed by the service yet; "
            "it applies them itself, in order"
        )
    return 0


def _print_reset(args: argparse.Namespace, outcome: replay.ResetOutcome) -> None:
    if args.json:
        _emit(outcome.to_json())
        return
    _say(f"consumer group {outcome.group} on {outcome.topic}:")
    for p in outcome.partitions:
        if p.replayed:
            _say(f"  partition {p.partition}: {p.committed} -> {p.target} ({p.replayed} again)")
        else:
            committed = "nothing committed" if p.committed is None else p.committed
            _say(f"  partition {p.partition}: {committed}, unchanged")
    verb = "would re-consume" if outcome.dry_run else "will re-consume"
    _say(f"the service {verb} {outcome.replayed} commands")
    if outcome.dry_run:
        _say("dry run: no offsets were moved")
        if outcome.members:
            _say(
                f"note: the group has {len(outcome.members)} active member(s) "
                f"({', '.join(outcome.members)}); a reset is refused until it is empty"
            )


# --- republish ------------------------------------------------------------------------


def _register_republish(subparsers: Subparsers) -> None:
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
        type=_event_type,
        action="append",
        default=[],
        help="created, updated or deleted, or group.created, ... (repeatable)",
    )
    parser.add_argument(
        "--since", type=_time, help=f"events that occurred at or after: {TIME_HELP}"
    )
    parser.add_argument("--until", type=_time, help="events that occurred before this time")
    parser.add_argument("--to-topic", help="publish here instead of the events topic")
    parser.add_argument(
        "--all", action="store_true", help="with no filter: every stored event (else refused)"
    )
    _common(parser)
    parser.set_defaults(handler=_handler(_republish))


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
        progress=_progress(args),
    )
    if args.json:
        _emit(outcome.to_json())
        return 0
    types = ", ".join(f"{name}: {count}" for name, count in outcome.by_type.items())
    span = f", occurred {_at(outcome.first)} to {_at(outcome.last)}" if outcome.matched else ""
    if outcome.dry_run:
        _say(f"dry run: {outcome.matched} events would go to {outcome.topic} ({types}){span}")
    else:
        _say(f"re-published {outcome.published} events to {outcome.topic} ({types}){span}")
    return 0


def _at(moment: datetime | None) -> str:
    return iso(moment) or "-"


# --- rebuild-state --------------------------------------------------------------------


def _register_rebuild_state(subparsers: Subparsers) -> None:
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
    _common(parser)
    parser.set_defaults(handler=_handler(_rebuild_state))


async def _rebuild_state(args: argparse.Namespace, settings: Settings) -> int:
    outcome = await state.rebuild_state(
        settings,
        organizations=args.organization,
        to_topic=args.to_topic,
        all_tombstones=args.all_tombstones,
        dry_run=args.dry_run,
        progress=_progress(args),
    )
    if args.json:
        _emit(outcome.to_json())
    elif outcome.dry_run:
        _say(
            f"dry run: {outcome.live} live groups and {outcome.tombstones} tombstones "
            f"would go to {outcome.topic}"
        )
    else:
        _say(
            f"published {outcome.live} live groups and {outcome.tombstones} tombstones to "
            f"{outcome.topic}; {outcome.caught_up} published again after changing meanwhile"
        )
    return 0


# --- dlq ------------------------------------------------------------------------------


def _register_dlq(subparsers: Subparsers) -> None:
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
    _common(listing, writes=False)
    listing.set_defaults(handler=_handler(_dlq_list))
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
    again.add_argument("--limit", type=_at_least(1), help="send at most this many")
    _common(again)
    again.set_defaults(handler=_handler(_dlq_redrive))


def _dlq_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason",
        action="append",
        default=[],
        help="only this dlq_reason (repeatable): not_json, not_object, empty, too_large, "
        "invalid_schema, processing_failed",
    )
    parser.add_argument("--since", type=_time, help=f"dead-lettered at or after: {TIME_HELP}")
    parser.add_argument("--until", type=_time, help="dead-lettered before this time")
    parser.add_argument(
        "--sample", type=_at_least(0), default=5, help="how many to show (default 5)"
    )


def _dlq_selection(args: argparse.Namespace) -> dlq.DeadLetterFilter:
    return dlq.DeadLetterFilter(args.reason, args.since, args.until)


async def _dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    report = await dlq.list_dead_letters(
        settings, _dlq_selection(args), sample=args.sample, progress=_progress(args)
    )
    if args.json:
        _emit({k: v for k, v in report.to_json().items() if k not in ("sent", "dry_run")})
        return 0
    _say(f"{report.matched} dead letters in {report.topic}")
    for reason, count in report.reasons.most_common():
        _say(f"  {reason}: {count}")
    _print_sample(report)
    return 0


async def _dlq_redrive(args: argparse.Namespace, settings: Settings) -> int:
    report = await dlq.redrive(
        settings,
        _dlq_selection(args),
        dry_run=args.dry_run,
        limit=args.limit,
        sample=args.sample,
        progress=_progress(args),
    )
    if args.json:
        _emit(report.to_json())
        return 0
    reasons = ", ".join(f"{r}: {n}" for r, n in report.reasons.most_common())
    reasons = f" ({reasons})" if reasons else ""
    if report.dry_run:
        _say(f"dry run: {report.matched} dead letters would be sent back{reasons}")
    else:
        _say(f"sent {report.sent} dead letters back to {settings.topic_commands}{reasons}")
    if report.still_malformed:
        skipped = ", ".join(f"{r}: {n}" for r, n in report.still_malformed.items())
        _say(f"skipped {report.still_malformed.total()} still malformed ({skipped})")
    _print_sample(report)
    return 0


def _print_sample(report: dlq.DeadLetterReport) -> None:
    if not report.sample:
        return
    _say("latest:")
    for item in report.sample:
        _say(
            f"  {item['partition']}:{item['offset']} {item['time']} {item['reason']}: "
            f"{item['error']} (from {item['source']}) key={item['key']} value={item['value']}"
        )


# --- send -----------------------------------------------------------------------------


def _register_send(subparsers: Subparsers) -> None:
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
    parser.add_argument("--type", choices=sorted(send.COMMAND_TYPES), help="group.<type>")
    parser.add_argument("--organization", help="organization_id")
    parser.add_argument("--group", help="group_id")
    parser.add_argument("--name")
    parser.add_argument("--description")
    parser.add_argument("--platform-id")
    parser.add_argument("--expected-version", type=int)
    parser.add_argument("--command-id", help="default: a new UUID")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the result (default 10)",
    )
    _common(parser)
    parser.set_defaults(handler=_handler(_send))


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
        expected_version=args.expected_version,
        command_id=args.command_id,
    )


async def _send_and_print(
    args: argparse.Namespace, settings: Settings, command: dict[str, Any]
) -> int:
    outcome = await send.send_command(settings, command, wait_s=args.timeout, dry_run=args.dry_run)
    if args.json:
        _emit(outcome.to_json())
    elif outcome.dry_run:
        _say("dry run, not sent:")
        _say_json(command)
    elif outcome.result is None:
        _say(
            f"no result for command {command['command_id']} within {args.timeout:g}s; "
            "is the service running? (see `customer-groups tail results`)",
            err=True,
        )
    else:
        result = outcome.result
        summary = f"{result.get('status')} {result.get('code')}"
        if result.get("error"):
            summary += f": {result['error']}"
        _say(f"{summary} (command {command['command_id']})")
        _say_json(result)
    return outcome.exit_code


# --- tail -----------------------------------------------------------------------------


def _register_tail(subparsers: Subparsers) -> None:
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
    parser.add_argument("--limit", type=_at_least(1), help="stop after this many messages")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="stop after this long without a new message",
    )
    parser.add_argument("--organization", help="only this organization's messages")
    parser.add_argument("--json", action="store_true", help="JSON lines, one per message")
    parser.set_defaults(handler=_handler(_tail))


async def _tail(args: argparse.Namespace, settings: Settings) -> int:
    def emit(record: Record) -> None:
        if args.json:
            _emit(tail.as_json(record))
        else:
            _say(tail.render(args.topic, record))

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
        emit,
        from_beginning=args.from_beginning,
        limit=args.limit,
        idle_timeout=args.timeout,
        organization=args.organization,
        stop=stop,
    )
    return 0
