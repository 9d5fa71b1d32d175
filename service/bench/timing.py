"""The bench's clocks: when the records a run waits for arrived, and the service's CPU meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Awaitable, Callable, Iterator


@contextlib.contextmanager
def no_collector_pauses() -> Iterator[None]:
    """The bench's own garbage collector stays out of what it times (as in `timeit`).

    A full collection of the bench's objects takes long enough to matter; every result that
    arrives meanwhile is stamped that much late, which is the bench's pause, not the
    service's (docs/benchmark.md)."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


async def arrivals(
    gained: Callable[[], Awaitable[dict[str, int]]], expected: dict[str, int], stall_s: float
) -> dict[str, float]:
    """When each topic had gained its expected number of records, polled every 10 ms; the
    topics that never got there (nothing new for `stall_s`) are left out."""
    arrived: dict[str, float] = {}
    last: dict[str, int] = {}
    last_progress = time.perf_counter()
    while len(arrived) < len(expected):
        await asyncio.sleep(0.01)
        counts = await gained()
        now = time.perf_counter()
        for topic, count in counts.items():
            if count >= expected[topic]:
                arrived.setdefault(topic, now)
        if counts != last:
            last, last_progress = counts, now
        elif now - last_progress > stall_s:
            break
    return arrived


def cpu_cores(before: float | None, after: float | None, seconds: float) -> float | None:
    """The cores the service kept busy on average; None when there is no process to read."""
    if before is None:
        return None
    return round(((after or 0.0) - before) / seconds, 2)
