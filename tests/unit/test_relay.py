"""The relay's polling, with the outbox and Kafka faked: how often it reads."""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from service import relay as relay_module
from service.adapters.outbox_store import OutboxRow
from service.config import Settings
from service.observability import Health, Metrics
from service.relay import OutboxRelay, PollPacing


def row(id_: int) -> OutboxRow:
    return OutboxRow(
        id_, f"e{id_}", "group.created", "org_a", f"grp_{id_}", 1, f"c{id_}", None, "{}",
        datetime.now(UTC),
    )  # fmt: skip


class FakeOutbox:
    """The outbox table: rows waiting, the relay's reads of them counted."""

    RELAY_LOCK = 1

    def __init__(self) -> None:
        self.waiting: list[OutboxRow] = []
        self.reads = 0

    async def try_lead(self, conn: Any) -> bool:
        return True

    async def unpublished(self, conn: Any, limit: int) -> list[OutboxRow]:
        self.reads += 1
        return self.waiting[:limit]

    async def mark_published(self, conn: Any, ids: Sequence[int]) -> None:
        self.waiting = [r for r in self.waiting if r.id not in set(ids)]


class FakePool:
    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        yield types.SimpleNamespace(execute=self._execute)

    async def _execute(self, *args: Any) -> None:
        return None


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[OutboxRow] = []
        self._arrived = asyncio.Event()

    async def publish(self, rows: Sequence[OutboxRow]) -> None:
        self.published.extend(rows)
        self._arrived.set()

    async def wait_for(self, count: int, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.published) < count:
                self._arrived.clear()
                await self._arrived.wait()


def start_relay(
    outbox: FakeOutbox,
    monkeypatch: pytest.MonkeyPatch,
    poll_max_s: float | None = 0.2,
    *,
    woken_by_commits: bool = True,
) -> tuple[OutboxRelay, FakePublisher, asyncio.Task[None]]:
    monkeypatch.setattr(relay_module, "outbox_store", outbox)
    settings = Settings(relay_poll_min_s=0.005, relay_poll_max_s=poll_max_s)
    publisher = FakePublisher()
    relay = OutboxRelay(
        FakePool(),  # type: ignore[arg-type]
        publisher,  # type: ignore[arg-type]
        settings,
        Metrics(),
        Health(),
        woken_by_commits=woken_by_commits,
    )
    return relay, publisher, asyncio.create_task(relay.run())


@contextlib.asynccontextmanager
async def relay_on(
    outbox: FakeOutbox,
    monkeypatch: pytest.MonkeyPatch,
    poll_max_s: float | None = 0.2,
    *,
    woken_by_commits: bool = True,
) -> AsyncIterator[tuple[OutboxRelay, FakePublisher]]:
    relay, publisher, task = start_relay(
        outbox, monkeypatch, poll_max_s, woken_by_commits=woken_by_commits
    )
    try:
        yield relay, publisher
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_pacing_shortens_on_rows_a_poll_finds_and_doubles_on_empty_polls() -> None:
    pacing = PollPacing(0.005, 0.02)
    waits = []
    for found in (False, False, False, False, True, False):
        pacing.polled(found=found)
        waits.append(pacing.wait_s)
    assert waits == [0.01, 0.02, 0.02, 0.02, 0.005, 0.01]


async def test_commits_here_are_read_once_each_with_no_empty_polls_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The consumer's wake-ups come every 30 ms; polls 5 ms after each read would add
    several empty reads per commit."""
    outbox = FakeOutbox()
    async with relay_on(outbox, monkeypatch) as (relay, publisher):
        await asyncio.sleep(0.5)  # idle: the polls back off
        before = outbox.reads
        for id_ in range(1, 21):
            outbox.waiting.append(row(id_))
            relay.wakeup.set()
            await asyncio.sleep(0.03)
        reads = outbox.reads - before
    assert [r.id for r in publisher.published] == list(range(1, 21))
    assert 20 <= reads <= 24


async def test_rows_no_wakeup_announced_keep_the_polls_fast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another process's commits are only found by polling; once a poll finds some, the
    next polls come at the shortest interval (5 ms) rather than the idle one (over 1 s)."""
    outbox = FakeOutbox()
    async with relay_on(outbox, monkeypatch, poll_max_s=2.0) as (_, publisher):
        await asyncio.sleep(1.5)
        outbox.waiting.append(row(1))
        await publisher.wait_for(1, timeout_s=5)
        outbox.waiting.append(row(2))
        # Idle, the next poll would be over a second away.
        await publisher.wait_for(2, timeout_s=0.5)
    assert [r.id for r in publisher.published] == [1, 2]


async def test_a_wakeup_in_the_same_moment_as_its_cancellation_still_stops_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The consumer's last commit wakes the relay while shutdown cancels it. Python 3.11's
    `asyncio.wait_for` then returns the wake-up and drops the cancellation: the relay kept
    publishing, and holding the leader's lock, after its service had stopped."""
    relay, _, task = start_relay(FakeOutbox(), monkeypatch)
    await asyncio.sleep(0.05)  # idle, waiting for a wake-up
    relay.wakeup.set()
    task.cancel()
    await asyncio.wait([task], timeout=1)
    assert task.cancelled()


@pytest.mark.parametrize(("woken_by_commits", "fewest", "most"), [(False, 20, 60), (True, 3, 9)])
async def test_unset_poll_max_is_short_only_where_no_commit_can_wake_the_relay(
    monkeypatch: pytest.MonkeyPatch, woken_by_commits: bool, fewest: int, most: int
) -> None:
    outbox = FakeOutbox()
    async with relay_on(outbox, monkeypatch, None, woken_by_commits=woken_by_commits):
        await asyncio.sleep(0.5)
    # Empty polls back off from 5 ms: to 10 ms alone (about 48 in 0.5 s), to 200 ms beside
    # a consumer (7).
    assert fewest <= outbox.reads <= most
