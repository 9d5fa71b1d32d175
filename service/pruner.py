"""Keeping the tables small: published outbox rows and processed-command records past their
retention, and the member rows of deleted groups."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from service.adapters.postgres.members import MemberPurger
from service.adapters.postgres.outbox_store import Backlog
from service.config import Settings
from service.observability import Metrics

log = logging.getLogger(__name__)


class PrunedOutbox(Protocol):
    """The outbox as the pruner sees it (adapters.postgres.outbox_store.PostgresOutbox)."""

    async def prune(
        self, outbox_after_s: float, processed_after_s: float, batch: int
    ) -> tuple[int, int]: ...

    async def backlog(self) -> Backlog: ...


class Pruner:
    """Deletes outbox rows and processed-command records past their retention, and the
    member rows of deleted groups."""

    def __init__(
        self,
        outbox: PrunedOutbox,
        settings: Settings,
        metrics: Metrics,
        members: MemberPurger | None = None,
    ) -> None:
        self._outbox = outbox
        self._members = members
        self._settings = settings
        self._metrics = metrics

    async def run(self) -> None:
        # Under an external publisher every row looks unpublished: a backlog gauge would
        # count the whole outbox, so the publisher's own lag is the one to watch.
        observe_backlog = self._settings.outbox_publisher == "relay"
        while True:
            try:
                await self.prune_once()
                if self._members is not None:
                    await self._members.purge(self._settings.prune_batch_size)
                if observe_backlog:
                    self._metrics.observe_backlog(await self._outbox.backlog())
            except Exception as error:
                log.warning("pruning skipped: %r", error)
            await asyncio.sleep(self._settings.prune_interval_s)

    async def prune_once(self) -> tuple[int, int]:
        s = self._settings
        return await self._outbox.prune(
            s.outbox_retention_days * 86400,
            s.processed_commands_retention_days * 86400,
            s.prune_batch_size,
        )
