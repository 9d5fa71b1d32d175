"""Test helpers that talk to real Kafka: produce raw commands, read what the service sends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from service.adapters.kafka import Record
from service.adapters.kafka.clients import client_options
from service.bootstrap import Container
from service.config import Settings


def command(
    type_: str = "group.create", organization_id: str = "org_a", **fields: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "command_id": str(uuid.uuid4()),
        "type": type_,
        "organization_id": organization_id,
    }
    if type_ == "group.create" and "name" not in fields:
        body["name"] = f"Group {uuid.uuid4().hex[:8]}"
    body.update(fields)
    return body


def headers_of(record: Record) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


async def wait_until_assigned(container: Container, timeout: float = 30) -> None:
    """Until the command consumer owns its partitions, commands sent now may wait a rebalance."""
    deadline = asyncio.get_running_loop().time() + timeout
    subscriber = container.subscriber
    while subscriber is not None:
        consumer = getattr(subscriber, "consumer", None)
        if consumer is not None and consumer.assignment():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the command consumer got no partitions")
        await asyncio.sleep(0.05)


class KafkaProbe:
    """A producer of raw command bytes and a reader of every topic the service writes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = AIOKafkaProducer(**client_options(settings), acks="all")
        self.records: dict[str, list[Record]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    async def start(self, *extra_topics: str) -> None:
        s = self.settings
        topics = [s.topic_results, s.topic_events, s.topic_dlq, s.topic_state, *extra_topics]
        self.records = {t: [] for t in topics}
        await self.producer.start()
        self._consumer = AIOKafkaConsumer(
            *topics, **client_options(s), group_id=None, auto_offset_reset="earliest"
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            for partition, records in batches.items():
                self.records[partition.topic].extend(records)
            if batches:
                self._arrived.set()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer:
            await self._consumer.stop()
        await self.producer.stop()

    async def send(
        self,
        body: dict[str, Any] | bytes,
        *,
        key: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        value = body if isinstance(body, bytes) else json.dumps(body).encode()
        if key is None and isinstance(body, dict):
            key = str(body.get("organization_id", "")).encode()
        await self.producer.send_and_wait(
            self.settings.topic_commands,
            value,
            key=key,
            headers=[(k, v.encode()) for k, v in (headers or {}).items()],
        )

    async def send_many(self, bodies: Iterable[dict[str, Any]]) -> None:
        futures = [
            await self.producer.send(
                self.settings.topic_commands,
                json.dumps(b).encode(),
                key=str(b["organization_id"]).encode(),
            )
            for b in bodies
        ]
        await asyncio.gather(*futures)

    async def wait_for(
        self, topic: str, done: Callable[[list[Record]], bool], timeout: float = 30
    ) -> list[Record]:
        deadline = asyncio.get_running_loop().time() + timeout
        while not done(self.records[topic]):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"{topic}: condition not met; have {len(self.records[topic])}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.2)):
                    await self._arrived.wait()
        return self.records[topic]

    def results(self) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in self.records[self.settings.topic_results]]

    def results_for(self, command_id: str) -> list[dict[str, Any]]:
        return [r for r in self.results() if r["command_id"] == command_id]

    async def result(self, command_id: str, timeout: float = 30) -> dict[str, Any]:
        """The first result for `command_id`."""
        topic = self.settings.topic_results
        await self.wait_for(
            topic,
            lambda records: any(json.loads(r.value)["command_id"] == command_id for r in records),
            timeout,
        )
        return self.results_for(command_id)[0]

    async def ask(self, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        await self.send(body, **kwargs)
        return await self.result(body["command_id"])

    def events(self) -> list[Record]:
        return self.records[self.settings.topic_events]

    async def wait_events(self, count: int, timeout: float = 30) -> list[Record]:
        return await self.wait_for(self.settings.topic_events, lambda r: len(r) >= count, timeout)
