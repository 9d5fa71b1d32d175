"""A group's customers in bulk: importing ids from a file as membership commands, and
exporting a group's members straight from PostgreSQL.

An import sends the ids as `group.customers.add` commands of up to 1,000 ids each, many in
flight at once, and waits for every result. Each command's id is derived from the file's
bytes, the organization, the group, the CSV column, the chunk size and the chunk's index,
so running the same import again (after an interruption, a timeout, a crash of the
service) sends the same commands: those applied before get their stored result and change
nothing, the others are applied now. Nothing is applied twice, no event is emitted twice."""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from service.config import Settings
from service.domain.commands import CUSTOMER_IDS_MAX, GROUP_ID
from service.escaping import printable
from service.ops.common import (
    QUIET,
    Advance,
    OpsError,
    Progress,
    database,
)
from service.ops.members_file import (
    FileScan,
    id_chunks,
    scan,
)
from service.ops.send import Exchange, exchange

ADD = "group.customers.add"

DEFAULT_IN_FLIGHT = 16
DEFAULT_TIMEOUT_S = 30.0


SELECT_LIVE_GROUP = """
SELECT customer_count FROM customer_groups
WHERE organization_id = $1 AND id = $2 AND deleted_at IS NULL
"""


def import_key(
    organization: str, group_id: str, chunk_size: int, column: str | None, digest: str
) -> str:
    """What a run's command ids are derived from: the same import gives the same ids, and
    any difference that would change a command's ids (another group, another chunk size,
    another column, another byte in the file) gives different ones."""
    identity = "\n".join((ADD, organization, group_id, str(chunk_size), column or "", digest))
    return hashlib.sha256(identity.encode()).hexdigest()[:40]


def command_id(key: str, index: int) -> str:
    return f"members-import-{key}-{index}"


@dataclass(frozen=True, slots=True)
class Rejection:
    command: int
    code: Any
    error: Any

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "code": self.code, "error": self.error}


@dataclass(slots=True)
class ImportOutcome:
    organization: str
    group_id: str
    key: str
    scan: FileScan
    commands: int
    dry_run: bool = False
    sent: int = 0
    answered: int = 0
    added: int = 0
    unchanged: int = 0
    rejected: int = 0
    not_sent: int = 0
    timed_out: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    customer_count: int | None = None

    @property
    def exit_code(self) -> int:
        """0 every id in, 1 bad lines or a rejection, 2 a result that did not come in time."""
        if self.timed_out:
            return 2
        return 1 if self.rejected or self.not_sent or self.scan.bad_lines else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "organization_id": self.organization,
            "group_id": self.group_id,
            "dry_run": self.dry_run,
            "file_sha256": self.scan.digest,
            "command_id_prefix": command_id(self.key, 0).removesuffix("0"),
            "ids": self.scan.ids,
            "commands": self.commands,
            "sent": self.sent,
            "answered": self.answered,
            "added": self.added,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "not_sent": self.not_sent,
            "timed_out": self.timed_out,
            "rejections": [r.to_json() for r in self.rejections],
            "bad_lines": self.scan.bad_lines,
            "bad_line_sample": [b.to_json() for b in self.scan.bad_sample],
            "customer_count": self.customer_count,
        }


def _check_group_id(group_id: str) -> None:
    if not GROUP_ID.fullmatch(group_id):
        raise OpsError(
            f"{printable(group_id)!r} is not a group id (grp_ followed by 1-60 of [A-Za-z0-9_-])"
        )


async def _live_group_count(settings: Settings, organization: str, group_id: str) -> int | None:
    async with database(settings) as pool:
        row = await pool.fetchrow(SELECT_LIVE_GROUP, organization, group_id)
    return None if row is None else int(row["customer_count"])


def _no_live_group(organization: str, group_id: str) -> OpsError:
    return OpsError(f"organization {organization!r} has no live group {group_id!r}")


async def import_members(
    settings: Settings,
    organization: str,
    group_id: str,
    data: bytes,
    *,
    column: str | None = None,
    chunk_size: int = CUSTOMER_IDS_MAX,
    in_flight: int = DEFAULT_IN_FLIGHT,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    dry_run: bool = False,
    progress: Progress = QUIET,
) -> ImportOutcome:
    """Add the ids in `data` to the group; see the module's docstring."""
    if not 1 <= chunk_size <= CUSTOMER_IDS_MAX:
        raise OpsError(f"a command takes 1-{CUSTOMER_IDS_MAX} ids, not {chunk_size}")
    _check_group_id(group_id)
    found = scan(data, column)
    key = import_key(organization, group_id, chunk_size, column, found.digest)
    commands = -(-found.ids // chunk_size)
    outcome = ImportOutcome(organization, group_id, key, found, commands, dry_run)
    # Checked before anything is sent: a command rejected for an unknown group would keep
    # its rejection under its derived id, and the same import would be rejected again
    # once the group exists.
    outcome.customer_count = await _live_group_count(settings, organization, group_id)
    if outcome.customer_count is None:
        raise _no_live_group(organization, group_id)
    if dry_run or not commands:
        return outcome
    async with exchange(settings) as channel:
        with progress.task("importing customers", found.ids) as step:
            await _send_all(
                channel,
                outcome,
                id_chunks(data, column, chunk_size),
                in_flight=in_flight,
                timeout_s=timeout_s,
                step=step,
            )
    # Not from the last result: a stored one, from an earlier run, tells an older count.
    outcome.customer_count = await _live_group_count(settings, organization, group_id)
    return outcome


async def _send_all(
    channel: Exchange,
    outcome: ImportOutcome,
    batches: Iterator[list[str]],
    *,
    in_flight: int,
    timeout_s: float,
    step: Advance,
) -> None:
    pending: collections.deque[_Pending] = collections.deque()
    stop = False
    for index, ids in enumerate(batches):
        while len(pending) >= in_flight and not stop:
            stop = await _settle(outcome, pending.popleft(), timeout_s=timeout_s, step=step)
        if stop:
            outcome.not_sent += len(ids)
            continue
        command = {
            "command_id": command_id(outcome.key, index),
            "type": ADD,
            "organization_id": outcome.organization,
            "group_id": outcome.group_id,
            "customer_ids": ids,
        }
        pending.append(_Pending(index, len(ids), await channel.send(command)))
        outcome.sent += 1
    while pending:
        sent = pending.popleft()
        if outcome.timed_out and not sent.answer.done():
            # One result already failed to come in time: waiting as long again for each
            # of the others would only multiply the wait.
            sent.answer.cancel()
            outcome.timed_out += 1
            continue
        await _settle(outcome, sent, timeout_s=timeout_s, step=step)


@dataclass(frozen=True, slots=True)
class _Pending:
    index: int
    count: int
    answer: asyncio.Future[dict[str, Any]]


async def _settle(
    outcome: ImportOutcome, sent: _Pending, *, timeout_s: float, step: Advance
) -> bool:
    """Account for one command's result; True when the import should stop sending."""
    index, count, answer = sent.index, sent.count, sent.answer
    try:
        result = await asyncio.wait_for(answer, timeout_s)
    except TimeoutError:
        outcome.timed_out += 1
        return True
    outcome.answered += 1
    step(count)
    customers = result.get("customers")
    if result.get("status") == "accepted" and isinstance(customers, dict):
        outcome.added += int(customers.get("changed", 0))
        outcome.unchanged += int(customers.get("unchanged", 0))
        return False
    outcome.rejected += count
    outcome.rejections.append(Rejection(index, result.get("code"), result.get("error")))
    return True
