"""Sending commands as a producer would, and waiting for their results."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from service.adapters.kafka import Record
from service.config import Settings
from service.ops.common import OpsError, headers_of, partitions_of, producer, reader

COMMAND_TYPES = {
    "create": "group.create",
    "update": "group.update",
    "delete": "group.delete",
    "add-customers": "group.customers.add",
    "remove-customers": "group.customers.remove",
}


def build_command(base: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """`base` (e.g. read from a file) with the given fields set over it; None leaves a field
    alone. A missing command_id is generated. Nothing else is checked: the service judges."""
    command = dict(base or {})
    if fields.get("type") in COMMAND_TYPES:
        fields["type"] = COMMAND_TYPES[fields["type"]]
    command.update({name: value for name, value in fields.items() if value is not None})
    command.setdefault("command_id", str(uuid.uuid4()))
    missing = [name for name in ("type", "organization_id") if not command.get(name)]
    if missing:
        raise OpsError(f"the command has no {' or '.join(missing)}")
    return command


@dataclass(frozen=True, slots=True)
class SendOutcome:
    command: dict[str, Any]
    result: dict[str, Any] | None
    correlation_id: str | None
    dry_run: bool = False

    @property
    def exit_code(self) -> int:
        """0 accepted (or not sent), 1 rejected, 2 no result in time."""
        if self.dry_run:
            return 0
        if self.result is None:
            return 2
        return 0 if self.result.get("status") == "accepted" else 1

    def to_json(self) -> dict[str, Any]:
        status = "dry_run" if self.dry_run else "timeout" if self.result is None else "done"
        return {
            "status": status,
            "correlation_id": self.correlation_id,
            "command": self.command,
            "result": self.result,
        }


async def send_command(
    settings: Settings, command: dict[str, Any], *, wait_s: float = 10.0, dry_run: bool = False
) -> SendOutcome:
    if dry_run:
        return SendOutcome(command, None, None, dry_run=True)
    correlation_id = str(uuid.uuid4())
    async with reader(settings) as consumer, producer(settings) as kafka:
        tps = await partitions_of(settings, settings.topic_results)
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        # Resolve the end offsets now, before sending: a lazily resolved position could land
        # after a fast result.
        for tp in tps:
            await consumer.position(tp)
        await kafka.send_and_wait(
            settings.topic_commands,
            orjson.dumps(command),
            key=str(command["organization_id"]).encode(),
            headers=[
                ("correlation_id", correlation_id.encode()),
                ("content-type", b"application/json"),
            ],
        )
        result = await _result(consumer, str(command["command_id"]), correlation_id, wait_s)
    return SendOutcome(command, result, correlation_id)


async def _result(
    consumer: AIOKafkaConsumer, command_id: str, correlation_id: str, wait_s: float
) -> dict[str, Any] | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while (remaining := deadline - loop.time()) > 0:
        batches = await consumer.getmany(timeout_ms=int(min(remaining, 0.2) * 1000) + 1)
        for records in batches.values():
            for record in records:
                if headers_of(record).get("correlation_id") != correlation_id:
                    continue
                result: dict[str, Any] = orjson.loads(record.value)
                if result.get("command_id") == command_id:
                    return result
    return None


class Exchange:
    """Commands out and their results back, many in flight at once: each result is matched
    to its command by the correlation_id header the command was sent with."""

    def __init__(
        self, settings: Settings, kafka: AIOKafkaProducer, results: AIOKafkaConsumer
    ) -> None:
        self._settings = settings
        self._kafka = kafka
        self._results = results
        self._waiting: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}

    async def send(self, command: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Hands `command` to the producer; the future is done when its result arrives."""
        correlation_id = str(uuid.uuid4())
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = (str(command["command_id"]), answer)
        delivery = await self._kafka.send(
            self._settings.topic_commands,
            orjson.dumps(command),
            key=str(command["organization_id"]).encode(),
            headers=[
                ("correlation_id", correlation_id.encode()),
                ("content-type", b"application/json"),
            ],
        )
        delivery.add_done_callback(lambda sent: self._undelivered(correlation_id, sent))
        return answer

    def _undelivered(self, correlation_id: str, delivery: asyncio.Future[Any]) -> None:
        """A command Kafka did not take has no result coming: its waiter learns why."""
        if delivery.cancelled() or (error := delivery.exception()) is None:
            return
        _, answer = self._waiting.pop(correlation_id, ("", None))
        if answer is not None and not answer.done():
            answer.set_exception(error)

    async def read_results(self) -> None:
        try:
            while True:
                batches = await self._results.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        self._match(record)
        except Exception as error:
            # Whoever waits for a result learns why none will come, rather than timing out.
            for _, answer in self._waiting.values():
                if not answer.done():
                    answer.set_exception(error)
            raise

    def _match(self, record: Record) -> None:
        correlation_id = headers_of(record).get("correlation_id")
        if correlation_id not in self._waiting or record.value is None:
            return
        command_id, answer = self._waiting[correlation_id]
        try:
            result = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            return
        if isinstance(result, dict) and result.get("command_id") == command_id:
            del self._waiting[correlation_id]
            if not answer.done():
                answer.set_result(result)


@contextlib.asynccontextmanager
async def exchange(settings: Settings) -> AsyncIterator[Exchange]:
    async with reader(settings) as consumer, producer(settings) as kafka:
        tps = await partitions_of(settings, settings.topic_results)
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        # Resolved before the first send: a lazily resolved position could land after a
        # fast result.
        for tp in tps:
            await consumer.position(tp)
        channel = Exchange(settings, kafka, consumer)
        reading = asyncio.create_task(channel.read_results(), name="ops-results-reader")
        try:
            yield channel
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
