"""Best-effort copies of results to the topics producers name in `reply_to`.

The results topic is the record; a copy is a courtesy, and nothing about it may hold up the
service. So copies have a producer of their own (aiokafka keeps every topic a producer was
asked about in its metadata requests for good: a hostile name must not stay in those of
the producer that carries results and events), go through a bounded queue served by one
task (a missing topic delays only the copies behind it, never a batch), and the topics
kept in that producer's metadata are the most recently used few."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from service.observability import Metrics

log = logging.getLogger(__name__)

REPLY_TO_TIMEOUT_S = 2.0
REPLY_TO_SKIP_S = 60.0
QUEUE_MAX = 10_000
TOPICS_MAX = 100
_SKIPPED_MAX = 1000

Copy = tuple[str, bytes, bytes, list[tuple[str, bytes]]]


class CopyProducer(Protocol):
    client: Any

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[Any]: ...


class ReplyCopies:
    def __init__(
        self,
        producer: CopyProducer | AIOKafkaProducer,
        metrics: Metrics,
        anchor_topic: str,
        *,
        queue_max: int = QUEUE_MAX,
        topics_max: int = TOPICS_MAX,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._producer = producer
        self._metrics = metrics
        self._anchor_topic = anchor_topic
        self._queue: asyncio.Queue[Copy] = asyncio.Queue(queue_max)
        self._topics: OrderedDict[str, None] = OrderedDict()
        self._topics_max = topics_max
        self._skipped_until: dict[str, float] = {}
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    @property
    def topics(self) -> list[str]:
        """The reply topics kept in the producer's metadata, least recently used first."""
        return list(self._topics)

    def producer_topics(self) -> set[str]:
        """Every topic the producer asks for in its metadata requests, as aiokafka holds it."""
        return set(self._producer.client._topics)

    async def start(self) -> None:
        await self._producer.start()
        self._task = asyncio.create_task(self._run(), name="reply-copies")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._producer.stop()

    def offer(self, topic: str, key: bytes, body: bytes, headers: list[tuple[str, bytes]]) -> None:
        if self._skipped(topic):
            self._metrics.replies_dropped.labels("topic_skipped").inc()
            return
        try:
            self._queue.put_nowait((topic, key, body, headers))
        except asyncio.QueueFull:
            self._metrics.replies_dropped.labels("queue_full").inc()

    async def drained(self) -> None:
        """Until every copy offered so far has been handed to the producer (tests, shutdown)."""
        await self._queue.join()

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def _skipped(self, topic: str) -> bool:
        until = self._skipped_until.get(topic)
        return until is not None and until > self._now()

    async def _run(self) -> None:
        while True:
            copy = await self._queue.get()
            try:
                await self._send(*copy)
            finally:
                self._queue.task_done()

    async def _send(
        self, topic: str, key: bytes, body: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        if self._skipped(topic):
            self._metrics.replies_dropped.labels("topic_skipped").inc()
            return
        self._remember(topic)
        try:
            async with asyncio.timeout(REPLY_TO_TIMEOUT_S):
                sent = await self._producer.send(topic, body, key=key, headers=headers)
        except (TimeoutError, KafkaError) as error:
            self._skip(topic, error)
            return
        sent.add_done_callback(self._delivered)

    def _delivered(self, sent: asyncio.Future[Any]) -> None:
        if sent.cancelled() or sent.exception() is not None:
            self._metrics.replies_dropped.labels("not_acknowledged").inc()

    def _remember(self, topic: str) -> None:
        self._topics[topic] = None
        self._topics.move_to_end(topic)
        if len(self._topics) > self._topics_max:
            self._topics.popitem(last=False)
            self._forget_others()

    def _skip(self, topic: str, error: BaseException) -> None:
        self._metrics.replies_dropped.labels("topic_unavailable").inc()
        log.warning("no copies to reply_to %r for %.0fs: %r", topic, REPLY_TO_SKIP_S, error)
        if len(self._skipped_until) >= _SKIPPED_MAX:
            self._skipped_until.clear()
        self._skipped_until[topic] = self._now() + REPLY_TO_SKIP_S
        self._topics.pop(topic, None)
        self._forget_others()

    def _forget_others(self) -> None:
        """Only the topics kept here stay in the producer's metadata requests; one that
        always exists is among them, as aiokafka asks for every topic when given none."""
        self._producer.client.set_topics([self._anchor_topic, *self._topics])


def create_copy_producer(options: dict[str, Any], client_id: str) -> AIOKafkaProducer:
    # Not idempotent: copies are best effort, and a refused one must not leave a producer
    # whose sequence numbers the broker no longer accepts.
    return AIOKafkaProducer(**options, client_id=f"{client_id}-replies", acks=1, linger_ms=1)
