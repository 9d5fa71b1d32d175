"""The outbox relay: publishes committed changes as CloudEvents, in order, at least once.

Ordering design: exactly one relay publishes at a time. Leadership is a PostgreSQL session
advisory lock; standbys retry it every `relay_lock_retry_s`, and the lock is released the
moment the leader's connection drops. Every read and mark goes through that session, so a
leader whose session is gone stops at its next step. Fencing: the relay's producer gives up
on a record after `relay_delivery_timeout_s`, so nothing a leader handed to Kafka can
arrive later than that; a leader that ends its term cleanly says so, and a new leader whose
predecessor did not waits that long before it publishes. A single
publisher reading `published_at IS NULL ORDER BY id` keeps each group's events in version
order: a group's changes are serialized by its organization's lock in the writer, so their
outbox ids are in commit order. Partitioned claiming (or SKIP LOCKED) would allow parallel
relays but reorders a group's events whenever two relays hold neighbouring rows.

Wake-up: an in-process signal from the consumer after each commit plus adaptive polling
(fast while polls find rows no signal announced, backing off to `relay_poll_max_s`
otherwise, by default shorter in a process with no consumer to signal). LISTEN/NOTIFY is
not used: NOTIFY takes a global lock at commit, which serializes every writer's commits
(docs/benchmark.md has what that cost), while an idle poll of the partial index is cheap."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from service.adapters.postgres.outbox_store import OutboxRow, Term
from service.config import Settings
from service.observability import Health, Metrics, command_ids
from service.retry import backoff, is_transient

log = logging.getLogger(__name__)


class PollPacing:
    """How long the relay waits for a wake-up before it polls.

    Only what polls find moves it: rows that no wake-up announced (another process's
    commits) make it the shortest, an empty poll doubles it. Reads on a wake-up leave it
    be, so a busy consumer in this process causes no empty polls between its commits."""

    def __init__(self, minimum_s: float, maximum_s: float) -> None:
        self._minimum_s = minimum_s
        self._maximum_s = maximum_s
        self.wait_s = minimum_s

    def polled(self, *, found: bool) -> None:
        self.wait_s = self._minimum_s if found else min(self.wait_s * 2, self._maximum_s)


# RELAY_POLL_MAX_S when unset, with and without commits in the same process to wake it.
POLL_MAX_WOKEN_S = 0.2
POLL_MAX_ALONE_S = 0.01


class Leader(Protocol):
    """The relay leader's session with the outbox (adapters.outbox_store.LeaderSession)."""

    async def try_lead(self) -> Term | None: ...

    async def hand_over(self, *, clean: bool) -> None: ...

    async def alive(self) -> None: ...

    async def unpublished(self, limit: int) -> list[OutboxRow]: ...

    async def mark_published(self, ids: Sequence[int]) -> None: ...

    async def parked_groups(self) -> set[str]: ...

    async def park(self, reasons: Sequence[tuple[int, str]]) -> None: ...


class Outbox(Protocol):
    def session(self) -> AbstractAsyncContextManager[Leader]: ...


class Publisher(Protocol):
    def refusal(self, row: OutboxRow) -> str | None: ...

    async def publish(self, rows: Sequence[OutboxRow]) -> None: ...


WAITS_BEHIND = "waits behind a parked event of its group"


class OutboxRelay:
    """Publishes the outbox in id order while it leads; see the module's docstring.

    Poison: a row Kafka cannot take (too large, or refused for good) is parked with its
    reason, and so is every later row of its group, which must not overtake it; the relay
    goes on with every other group. An operator retries or releases parked rows."""

    def __init__(
        self,
        outbox: Outbox,
        publisher: Publisher,
        settings: Settings,
        metrics: Metrics,
        health: Health,
        *,
        woken_by_commits: bool = True,
    ) -> None:
        self._outbox = outbox
        self._publisher = publisher
        self._settings = settings
        self.poll_max_s = settings.relay_poll_max_s or (
            POLL_MAX_WOKEN_S if woken_by_commits else POLL_MAX_ALONE_S
        )
        self._metrics = metrics
        self._health = health
        self.wakeup = asyncio.Event()
        self.leading = False
        self._failures = 0
        self._parked: set[str] = set()
        self._sending = False
        self._pacing: PollPacing | None = None

    @property
    def poll_wait_s(self) -> float | None:
        """How long the relay now waits for a wake-up before it polls."""
        return None if self._pacing is None else self._pacing.wait_s

    async def run(self) -> None:
        while True:
            try:
                await self._lead()
            except Exception as error:
                if not is_transient(error):
                    log.exception("outbox relay failed")
                self.leading = False
                self._health.degraded("relay", f"{type(error).__name__}: {error}")
                self._failures += 1
                delay = backoff(self._failures, 0.1, 5.0)
                log.warning("outbox relay paused, retrying in %.1fs: %r", delay, error)
                await asyncio.sleep(delay)

    def _working(self) -> None:
        self._failures = 0
        self._health.ok("relay")

    async def _lead(self) -> None:
        async with self._outbox.session() as leader:
            while (term := await leader.try_lead()) is None:
                self._working()
                await asyncio.sleep(self._settings.relay_lock_retry_s)
            # Clean only once nothing this term or the last one sent can still arrive.
            settled = term.predecessor_released
            try:
                if not settled:
                    # Whatever the last leader handed to Kafka arrives or expires within
                    # the delivery timeout; publishing sooner could put an older event of
                    # a group after a newer one.
                    wait_s = self._settings.relay_delivery_timeout_s
                    log.warning(
                        "outbox relay leads (term %d) after a leader that did not hand over;"
                        " waiting %.1fs for its deliveries to settle",
                        term.epoch,
                        wait_s,
                    )
                    await asyncio.sleep(wait_s)
                    settled = True
                    await leader.alive()
                log.info("outbox relay is the active publisher (term %d)", term.epoch)
                self.leading = True
                self._parked = await leader.parked_groups()
                await self._publish_forever(leader)
            finally:
                self.leading = False
                with contextlib.suppress(Exception):
                    await leader.hand_over(clean=settled and not self._sending)

    async def _publish_forever(self, leader: Leader) -> None:
        settings = self._settings
        pacing = self._pacing = PollPacing(settings.relay_poll_min_s, self.poll_max_s)
        polled = True
        while True:
            # Cleared before the read, not after the publish: a commit made meanwhile (its
            # rows possibly missed by this read) must cut the next wait short.
            self.wakeup.clear()
            read_at = asyncio.get_running_loop().time()
            rows = await leader.unpublished(settings.relay_batch_size)
            if rows:
                await self._relay(leader, rows, read_at)
            self._working()
            if len(rows) == settings.relay_batch_size:
                continue
            if polled:
                pacing.polled(found=bool(rows))
            try:
                # Not `wait_for`: in Python 3.11 it drops a cancellation that comes with the
                # wake-up, and the relay would outlive its service.
                async with asyncio.timeout(pacing.wait_s):
                    await self.wakeup.wait()
                polled = False
            except TimeoutError:
                polled = True

    async def _relay(self, leader: Leader, rows: list[OutboxRow], read_at: float) -> None:
        """Publish a batch, park what cannot go, mark what went."""
        if asyncio.get_running_loop().time() - read_at > self._settings.relay_lock_retry_s:
            # Paused since the read (a stopped process, a stalled machine): another relay
            # may lead by now and have published newer events of these groups.
            await leader.alive()
        if self._parked:
            # Only this leader parks rows, but an operator may release them meanwhile.
            self._parked = await leader.parked_groups()
        parked: list[tuple[int, str]] = []
        ready: list[OutboxRow] = []
        for row in rows:
            reason = WAITS_BEHIND if row.group_id in self._parked else self._publisher.refusal(row)
            if reason is None:
                ready.append(row)
                continue
            parked.append((row.id, reason))
            self._parked.add(row.group_id)
        published = await self._publish(ready, parked)
        if parked:
            await leader.park(parked)
            self._metrics.events_parked.inc(sum(r != WAITS_BEHIND for _, r in parked))
            first = next(r for r in rows if r.group_id in self._parked)
            log.error(
                "outbox relay parked %d events (of groups %s): %s",
                len(parked),
                ", ".join(sorted({r.group_id for r in rows if r.group_id in self._parked})),
                "; ".join(sorted({r for _, r in parked})),
                extra=command_ids(first.organization_id, first.command_id, first.group_id),
            )
        if published:
            await leader.mark_published([row.id for row in published])
            self._metrics.events_published.inc(len(published))

    async def _publish(
        self, rows: list[OutboxRow], parked: list[tuple[int, str]]
    ) -> list[OutboxRow]:
        """The rows Kafka acknowledged. A refusal that is not transient is narrowed down to
        its rows by publishing them one at a time, in order; those are parked."""
        if not rows:
            return []
        try:
            await self._send(rows)
            return rows
        except Exception as error:
            if is_transient(error):
                raise
            if len(rows) == 1:
                parked.append((rows[0].id, f"refused by Kafka: {error!r}"[:1000]))
                self._parked.add(rows[0].group_id)
                return []
        published: list[OutboxRow] = []
        for row in rows:
            if row.group_id in self._parked:
                parked.append((row.id, WAITS_BEHIND))
            else:
                published += await self._publish([row], parked)
        return published

    async def _send(self, rows: Sequence[OutboxRow]) -> None:
        """Wait for Kafka's acknowledgement, degraded while it is slow. The relay's producer
        gives up on a record after the delivery timeout, so a publish always ends."""
        self._sending = True
        sending = asyncio.ensure_future(self._publisher.publish(rows))
        try:
            waited = 0.0
            while not sending.done():
                await asyncio.wait([sending], timeout=self._settings.relay_ack_timeout_s)
                waited += self._settings.relay_ack_timeout_s
                if not sending.done():
                    self._health.degraded(
                        "relay", f"Kafka has not acknowledged {len(rows)} events in {waited:.0f}s"
                    )
            sending.result()
            self._sending = False
        finally:
            if not sending.done():
                sending.cancel()
