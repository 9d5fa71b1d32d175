"""Results to Kafka: what a producer's reply_to may cost the service."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.adapters import kafka
from service.adapters.kafka import CommandPublisher, Reply
from service.config import Settings
from service.domain.errors import GroupNotFound
from service.domain.results import CommandResult


class Batch:
    def append(self, **record: Any) -> bool:
        return True

    def close(self) -> None:
        pass


class Producer:
    """Acknowledges the results topic at once; never answers for a topic that is missing."""

    def __init__(self) -> None:
        self.sent_to: list[str] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> Batch:
        return Batch()

    async def send_batch(self, batch: Batch, topic: str, partition: int) -> asyncio.Future[Any]:
        return self._done()

    async def send(self, topic: str, value: bytes, **kwargs: Any) -> asyncio.Future[Any]:
        self.sent_to.append(topic)
        if topic == "missing":
            await asyncio.Event().wait()
        return self._done()

    @staticmethod
    def _done() -> asyncio.Future[Any]:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def reply(reply_to: str) -> Reply:
    result = CommandResult.rejected("c1", "org_a", GroupNotFound("grp_x"))
    return Reply(result, reply_to, b"corr")


async def sends_to(topics: list[str], times: int) -> list[str]:
    producer = Producer()
    publisher = CommandPublisher(producer, Settings(_env_file=None))
    for _ in range(times):
        await publisher.send([reply(topic) for topic in topics])
    return producer.sent_to


async def test_a_reply_to_that_cannot_be_written_is_tried_once_then_skipped_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka, "REPLY_TO_TIMEOUT_S", 0.01)
    sent_to = await sends_to(["missing", "replies"], 3)
    assert (sent_to.count("missing"), sent_to.count("replies")) == (1, 3)


async def test_once_its_while_is_over_it_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka, "REPLY_TO_TIMEOUT_S", 0.01)
    monkeypatch.setattr(kafka, "REPLY_TO_SKIP_S", 0.0)
    assert (await sends_to(["missing"], 3)).count("missing") == 3
