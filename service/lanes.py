"""Lanes: a batch's commands shared among transactions that run side by side, each
organization always in the same lane, so its commands keep their order from batch to batch."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

from service.domain.commands import weight
from service.handlers import Incoming

T = TypeVar("T")


# Below this many commands per lane, a lane's own round trips cost more latency than
# running beside another lane saves.
LANE_MIN_COMMANDS = 100


Lane: TypeAlias = list[tuple[int, Incoming]]


@dataclass(frozen=True, slots=True)
class Part:
    """Some of a batch's commands, applied in one transaction after the earlier batches'
    parts in the same lanes."""

    lanes: Sequence[int]
    entries: Lane


def split_lanes(incoming: Lane, lanes: int) -> list[Part]:
    """Share a batch's commands among up to `lanes` transactions.

    An organization always has the same lane, so its commands keep their order from batch
    to batch, and lanes take no lock another holds. A batch too small to share is one part
    that comes after every lane. crc32 rather than hash(), which is salted per process: lanes
    hold the same organizations in every run."""
    if lanes == 1 or len(incoming) < lanes * LANE_MIN_COMMANDS:
        return [Part(range(lanes), incoming)]
    split: dict[int, Lane] = {}
    for entry in incoming:
        lane = zlib.crc32(entry[1].command.organization_id.encode()) % lanes
        split.setdefault(lane, []).append(entry)
    return [Part((lane,), entries) for lane, entries in sorted(split.items())]


class LaneStopped(RuntimeError):
    """A part before this one in its lane did not finish: running this one would overtake it."""


class LaneOrder:
    """Runs each part after the parts scheduled before it in its lanes, and never beside
    them; parts in other lanes run at once. A lane whose last part did not finish takes no
    more: what comes after it would overtake it."""

    def __init__(self, lanes: int) -> None:
        self._last: list[asyncio.Task[Any] | None] = [None] * lanes

    def schedule(self, lanes: Sequence[int], work: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        earlier = {task for lane in lanes if (task := self._last[lane]) is not None}
        task = asyncio.create_task(self._after(earlier, work))
        for lane in lanes:
            self._last[lane] = task
        return task

    @staticmethod
    async def _after(earlier: set[asyncio.Task[Any]], work: Callable[[], Awaitable[T]]) -> T:
        if earlier:
            await asyncio.wait(earlier)
        if any(task.cancelled() or task.exception() is not None for task in earlier):
            raise LaneStopped("an earlier batch in this lane did not finish")
        return await work()


def by_weight(items: Sequence[Incoming], limit: int) -> list[list[Incoming]]:
    """Consecutive runs of commands weighing at most `limit` each (a heavier command alone),
    so that no transaction loads or writes more rows than that."""
    runs: list[list[Incoming]] = [[]]
    total = 0
    for item in items:
        cost = weight(item.command)
        if runs[-1] and total + cost > limit:
            runs.append([])
            total = 0
        runs[-1].append(item)
        total += cost
    return runs
