"""Copies of results to a producer's reply_to: what they may cost the service."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.adapters.kafka import reply_copies
from service.adapters.kafka.reply_copies import ReplyCopies
from service.adapters.kafka.results import CommandPublisher, Reply
from service.config import Settings
from service.domain.errors import GroupNotFound
from service.domain.results import CommandResult
from service.observability import Metrics


class Client:
    def __init__(self) -> None:
        self.topics: set[str] = set()

    def set_topics(self, topics: list[str]) -> None:
        self.topics = set(topics)


class Batch:
    def append(self, **record: Any) -> bool:
        return True

    def close(self) -> None:
        pass


class Producer:
    """Acknowledges at once; never answers for a topic named 'missing'. Keeps every topic it
    is asked about in its metadata set, as aiokafka does."""

    def __init__(self) -> None:
        self.client = Client()
        self.sent_to: list[str] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> Batch:
        return Batch()

    async def send_batch(self, batch: Batch, topic: str, partition: int) -> asyncio.Future[Any]:
        return self._done()

    async def send(self, topic: str, value: bytes, **kwargs: Any) -> asyncio.Future[Any]:
        self.client.topics.add(topic)
        if topic == "missing":
            await asyncio.Event().wait()
        self.sent_to.append(topic)
        return self._done()

    @staticmethod
    def _done() -> asyncio.Future[Any]:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def reply(reply_to: str) -> Reply:
    result = CommandResult.rejected("c1", "org_a", GroupNotFound("grp_x"))
    return Reply(result, reply_to, b"corr")


async def copies_to(topics: list[str], times: int, **options: Any) -> tuple[Producer, ReplyCopies]:
    producer = Producer()
    copies = ReplyCopies(producer, Metrics(), "results", **options)
    publisher = CommandPublisher(producer, Settings(_env_file=None), copies)
    await copies.start()
    try:
        for _ in range(times):
            await publisher.send([reply(topic) for topic in topics])
            async with asyncio.timeout(5):
                await copies.drained()
    finally:
        await copies.stop()
    return producer, copies


async def test_a_reply_to_that_cannot_be_written_is_tried_once_then_skipped_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reply_copies, "REPLY_TO_TIMEOUT_S", 0.01)
    producer, _ = await copies_to(["missing", "replies"], 3)
    assert producer.sent_to.count("replies") == 3
    assert "missing" not in producer.client.topics


async def test_a_missing_reply_topic_never_holds_up_the_results() -> None:
    producer = Producer()
    copies = ReplyCopies(producer, Metrics(), "results")
    publisher = CommandPublisher(producer, Settings(_env_file=None), copies)
    await copies.start()
    try:
        async with asyncio.timeout(1):
            for _ in range(3):
                await publisher.send([reply("missing"), reply("replies")])
    finally:
        await copies.stop()


async def test_the_reply_topics_kept_in_the_producers_metadata_are_bounded() -> None:
    producer, copies = await copies_to([f"replies-{n}" for n in range(50)], 1, topics_max=10)
    assert len(producer.sent_to) == 50
    assert producer.client.topics == {"results", *(f"replies-{n}" for n in range(40, 50))}
    assert copies.topics == [f"replies-{n}" for n in range(40, 50)]


async def test_copies_beyond_the_queue_are_dropped_and_counted() -> None:
    producer = Producer()
    metrics = Metrics()
    copies = ReplyCopies(producer, metrics, "results", queue_max=2)
    for _ in range(5):
        copies.offer("replies", b"k", b"v", [])
    dropped = metrics.registry.get_sample_value(
        "customer_groups_reply_copies_dropped_total", {"reason": "queue_full"}
    )
    assert dropped == 3


async def test_no_copy_goes_to_one_of_the_services_own_topics() -> None:
    settings = Settings(_env_file=None)
    producer, _ = await copies_to([settings.topic_events, "replies"], 1)
    assert producer.sent_to == ["replies"]
