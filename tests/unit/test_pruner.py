"""OUTBOX_PUBLISHER: the pruner of an outbox that our relay publishes, or something else does."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from pydantic import ValidationError

from service.adapters.postgres.outbox_store import Backlog
from service.config import Settings
from service.observability import Metrics
from service.pruner import Pruner


class FakeOutbox:
    def __init__(self) -> None:
        self.prunes: list[tuple[float, float, int]] = []

    async def prune(
        self, outbox_after_s: float, processed_after_s: float, batch: int
    ) -> tuple[int, int]:
        self.prunes.append((outbox_after_s, processed_after_s, batch))
        return (0, 0)

    async def backlog(self) -> Backlog:
        return Backlog(rows=12, oldest_age=3600.0, parked=1)


def test_our_relay_publishes_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(_env_file=None).outbox_publisher == "relay"
    monkeypatch.setenv("OUTBOX_PUBLISHER", "external")
    assert Settings(_env_file=None).outbox_publisher == "external"


def test_an_unknown_publisher_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_PUBLISHER", "debezium")
    with pytest.raises(ValidationError, match="outbox_publisher"):
        Settings(_env_file=None)


def test_the_publisher_survives_the_trip_through_a_child_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = Settings(_env_file=None, outbox_publisher="external")
    for name, value in original.environment().items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None).outbox_publisher == "external"


async def test_retention_is_passed_in_seconds() -> None:
    outbox = FakeOutbox()
    settings = Settings(
        _env_file=None,
        outbox_retention_days=2,
        processed_commands_retention_days=0.5,
        prune_batch_size=7,
    )
    await Pruner(outbox, settings, Metrics()).prune_once()
    assert outbox.prunes == [(2 * 86400, 0.5 * 86400, 7)]


@pytest.mark.parametrize(("publisher", "observed"), [("relay", 12.0), ("external", 0.0)])
async def test_the_backlog_gauges_follow_only_our_relay(publisher: str, observed: float) -> None:
    """Under an external publisher no row is ever marked published: the outbox would look
    like one long backlog."""
    metrics = Metrics()
    settings = Settings(_env_file=None, outbox_publisher=publisher, prune_interval_s=0.01)
    outbox = FakeOutbox()
    task = asyncio.create_task(Pruner(outbox, settings, metrics).run())
    while len(outbox.prunes) < 2:
        await asyncio.sleep(0.001)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert metrics.registry.get_sample_value("customer_groups_outbox_backlog") == observed
