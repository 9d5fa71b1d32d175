"""Results of the HTTP API's commands, read from the results topic while a request waits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from service.adapters.kafka.clients import client_options
from service.config import Settings
from service.domain.results import CommandResult

log = logging.getLogger(__name__)


class ResultWaiter:
    """Reads the results topic while requests await results, and hands each to its request.

    Every request puts a fresh correlation_id on its command and the service echoes it on
    the result (on a replayed command's stored result too), so results find their request
    even when two requests share an Idempotency-Key. With no request waiting its partitions
    are paused: an idle API reads nothing, rather than every result of every command."""

    def __init__(self, settings: Settings) -> None:
        self._topic = settings.topic_results
        self._seek_timeout_s = settings.http_command_timeout_s
        self._consumer = AIOKafkaConsumer(
            self._topic,
            **client_options(settings),
            client_id=f"{settings.kafka_client_id}-http",
            group_id=None,
            auto_offset_reset="latest",
        )
        self._waiting: dict[str, asyncio.Future[CommandResult]] = {}
        self._resuming = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.pause(*self._consumer.assignment())
        self._task = asyncio.create_task(self._read(), name="http-result-waiter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def reading(self) -> bool:
        return not self._consumer.paused()

    @contextlib.asynccontextmanager
    async def expect(self, correlation_id: str) -> AsyncIterator[asyncio.Future[CommandResult]]:
        """Await the result with this correlation_id; send its command inside this block."""
        future: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        async with self._resuming:
            partitions = self._consumer.assignment()
            if not self._waiting and partitions:
                # From the ends as they are now: the command, sent after this, lies beyond.
                async with asyncio.timeout(self._seek_timeout_s):
                    await self._consumer.seek_to_end(*partitions)
                self._consumer.resume(*partitions)
            self._waiting[correlation_id] = future
        try:
            yield future
        finally:
            self._waiting.pop(correlation_id, None)
            if not self._waiting:
                self._consumer.pause(*self._consumer.assignment())

    async def _read(self) -> None:
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=1000)
            except KafkaError as error:
                log.warning("reading command results failed, retrying: %r", error)
                await asyncio.sleep(1)
                continue
            for records in batches.values():
                for record in records:
                    self._deliver(record.key, record.value, record.headers)

    def _deliver(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]
    ) -> None:
        correlation_id = next((v for k, v in headers if k == "correlation_id"), None)
        future = self._waiting.get(
            correlation_id.decode(errors="replace") if correlation_id else ""
        )
        if future is None or future.done() or not value or not key:
            return
        try:
            result = CommandResult.from_json(key.decode(), orjson.loads(value))
        except (ValueError, KeyError, TypeError) as error:
            future.set_exception(error)
        else:
            future.set_result(result)
