"""The relay's polling, with the outbox and Kafka faked: how often it reads."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import pytest

from service import relay as relay_module
from service.adapters.postgres.outbox_store import OutboxRow, Term
from service.config import Settings
from service.observability import Health, Metrics
from service.relay import WAITS_BEHIND, OutboxRelay, PollPacing


def row(id_: int, group: str | None = None) -> OutboxRow:
    return OutboxRow(
        id_, f"e{id_}", "group.created", "org_a", group or f"grp_{id_}", 1, f"c{id_}", None,
        "{}", datetime.now(UTC),
    )  # fmt: skip


class FakeOutbox:
    """The outbox table and its leader session: rows waiting, the relay's reads counted."""

    def __init__(self, *, predecessor_released: bool = True) -> None:
        self.waiting: list[OutboxRow] = []
        self.parked: dict[int, str] = {}
        self.reads = 0
        self.handed_over: list[bool] = []
        self.terms = 0
        self._released = predecessor_released

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[FakeOutbox]:
        yield self

    async def try_lead(self) -> Term:
        self.terms += 1
        return Term(self.terms, self._released)

    async def hand_over(self, *, clean: bool) -> None:
        self.handed_over.append(clean)

    async def alive(self) -> None:
        return None

    async def unpublished(self, limit: int) -> list[OutboxRow]:
        self.reads += 1
        return [r for r in self.waiting if r.id not in self.parked][:limit]

    async def mark_published(self, ids: Sequence[int]) -> None:
        self.waiting = [r for r in self.waiting if r.id not in set(ids)]

    async def parked_groups(self) -> set[str]:
        return {r.group_id for r in self.waiting if r.id in self.parked}

    async def park(self, reasons: Sequence[tuple[int, str]]) -> None:
        self.parked.update(reasons)


class FakePublisher:
    def __init__(self, refused: Sequence[int] = ()) -> None:
        self.published: list[OutboxRow] = []
        self._refused = set(refused)
        self._arrived = asyncio.Event()

    def refusal(self, row: OutboxRow) -> str | None:
        return "too large" if row.id in self._refused else None

    async def publish(self, rows: Sequence[OutboxRow]) -> None:
        self.published.extend(rows)
        self._arrived.set()

    async def wait_for(self, count: int, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.published) < count:
                self._arrived.clear()
                await self._arrived.wait()


async def until(condition: Callable[[], bool], timeout_s: float = 5) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


def start_relay(
    outbox: FakeOutbox,
    poll_max_s: float | None = 0.2,
    *,
    woken_by_commits: bool = True,
    publisher: FakePublisher | None = None,
    settings: Settings | None = None,
) -> tuple[OutboxRelay, FakePublisher, asyncio.Task[None]]:
    settings = settings or Settings(relay_poll_min_s=0.005, relay_poll_max_s=poll_max_s)
    publisher = publisher or FakePublisher()
    relay = OutboxRelay(
        outbox, publisher, settings, Metrics(), Health(), woken_by_commits=woken_by_commits
    )
    return relay, publisher, asyncio.create_task(relay.run())


@contextlib.asynccontextmanager
async def relay_on(
    outbox: FakeOutbox,
    poll_max_s: float | None = 0.2,
    *,
    woken_by_commits: bool = True,
    publisher: FakePublisher | None = None,
) -> AsyncIterator[tuple[OutboxRelay, FakePublisher]]:
    relay, publisher, task = start_relay(
        outbox, poll_max_s, woken_by_commits=woken_by_commits, publisher=publisher
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


async def test_commits_here_are_read_once_each_with_no_empty_polls_between() -> None:
    """Each wake-up from the consumer's commits is one read, and nothing else reads: the
    polls' timer (a minute here) never fires while wake-ups keep coming."""
    outbox = FakeOutbox()
    settings = Settings(relay_poll_min_s=60, relay_poll_max_s=60)
    relay, publisher, task = start_relay(outbox, settings=settings)
    try:
        await until(lambda: outbox.reads == 1)
        for id_ in range(1, 21):
            outbox.waiting.append(row(id_))
            relay.wakeup.set()
            await until(lambda: not outbox.waiting)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [r.id for r in publisher.published] == list(range(1, 21))
    assert outbox.reads == 21


async def test_rows_no_wakeup_announced_keep_the_polls_fast() -> None:
    """Another process's commits are only found by polling; once a poll finds some, the
    next poll comes at the shortest interval rather than the idle one."""
    outbox = FakeOutbox()
    async with relay_on(outbox, poll_max_s=2.0) as (relay, publisher):
        await until(lambda: relay.poll_wait_s == 2.0)
        outbox.waiting.append(row(1))
        await publisher.wait_for(1, timeout_s=5)
        await until(lambda: not outbox.waiting)
        assert relay.poll_wait_s == 0.005
    assert [r.id for r in publisher.published] == [1]


async def test_a_wakeup_in_the_same_moment_as_its_cancellation_still_stops_it() -> None:
    """The consumer's last commit wakes the relay while shutdown cancels it. Python 3.11's
    `asyncio.wait_for` then returns the wake-up and drops the cancellation: the relay kept
    publishing, and holding the leader's lock, after its service had stopped."""
    relay, _, task = start_relay(FakeOutbox())
    await asyncio.sleep(0.05)  # idle, waiting for a wake-up
    relay.wakeup.set()
    task.cancel()
    await asyncio.wait([task], timeout=1)
    assert task.cancelled()


@pytest.mark.parametrize(
    ("woken_by_commits", "poll_max_s"),
    [(False, relay_module.POLL_MAX_ALONE_S), (True, relay_module.POLL_MAX_WOKEN_S)],
)
def test_unset_poll_max_is_short_only_where_no_commit_can_wake_the_relay(
    woken_by_commits: bool, poll_max_s: float
) -> None:
    relay = OutboxRelay(
        FakeOutbox(),
        FakePublisher(),
        Settings(_env_file=None),
        Metrics(),
        Health(),
        woken_by_commits=woken_by_commits,
    )
    assert relay.poll_max_s == poll_max_s


async def test_a_row_kafka_cannot_take_is_parked_with_its_group_behind_it_and_others_go_on() -> (
    None
):
    outbox = FakeOutbox()
    outbox.waiting = [row(1, "grp_a"), row(2, "grp_b"), row(3, "grp_a"), row(4, "grp_c")]
    publisher = FakePublisher(refused=[1])
    async with relay_on(outbox, publisher=publisher) as (relay, _):
        await publisher.wait_for(2, timeout_s=5)
        outbox.waiting.append(row(5, "grp_a"))
        outbox.waiting.append(row(6, "grp_d"))
        relay.wakeup.set()
        await until(lambda: len(outbox.parked) == 3)
    assert [r.id for r in publisher.published] == [2, 4, 6]
    assert outbox.parked == {1: "too large", 3: WAITS_BEHIND, 5: WAITS_BEHIND}


async def test_once_an_operator_releases_a_parked_row_its_group_goes_on_in_order() -> None:
    outbox = FakeOutbox()
    outbox.waiting = [row(1, "grp_a"), row(2, "grp_a"), row(3, "grp_b")]
    publisher = FakePublisher(refused=[1])
    async with relay_on(outbox, publisher=publisher) as (relay, _):
        await until(lambda: len(outbox.parked) == 2)
        assert set(outbox.parked) == {1, 2}
        # What `customer-groups outbox release` does: the row is done, the rest back in line.
        outbox.waiting = [r for r in outbox.waiting if r.id != 1]
        outbox.parked.clear()
        outbox.waiting.append(row(4, "grp_c"))
        relay.wakeup.set()
        await publisher.wait_for(3, timeout_s=5)
    assert [r.id for r in publisher.published] == [3, 2, 4]


async def test_after_a_leader_that_did_not_hand_over_the_next_waits_out_its_deliveries() -> None:
    outbox = FakeOutbox(predecessor_released=False)
    outbox.waiting = [row(1)]
    settings = Settings(relay_poll_min_s=0.005, relay_poll_max_s=0.05, relay_delivery_timeout_s=1)
    _relay, publisher, task = start_relay(outbox, settings=settings)
    try:
        await asyncio.sleep(0.5)
        assert publisher.published == []
        await until(lambda: not outbox.waiting)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert outbox.handed_over == [True]


async def test_a_leader_stopped_with_events_on_their_way_does_not_claim_a_clean_hand_over() -> None:
    outbox = FakeOutbox()
    outbox.waiting = [row(1)]
    never = asyncio.Event()

    class Stuck(FakePublisher):
        async def publish(self, rows: Sequence[OutboxRow]) -> None:
            self._arrived.set()
            await never.wait()

    publisher = Stuck()
    _relay, _, task = start_relay(outbox, publisher=publisher)
    async with asyncio.timeout(5):
        await publisher._arrived.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert outbox.handed_over == [False]


async def test_a_leader_stopped_while_it_waits_out_its_predecessor_hands_over_unclean() -> None:
    outbox = FakeOutbox(predecessor_released=False)
    settings = Settings(relay_poll_min_s=0.005, relay_poll_max_s=0.05, relay_delivery_timeout_s=30)
    _, _, task = start_relay(outbox, settings=settings)
    await until(lambda: outbox.terms == 1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert outbox.handed_over == [False]
