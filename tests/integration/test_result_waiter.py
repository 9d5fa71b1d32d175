"""The HTTP API's reader of the results topic, on real Kafka."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
from aiokafka import AIOKafkaProducer

from service.adapters.kafka.clients import client_options
from service.adapters.kafka.result_waiter import ResultWaiter
from service.adapters.kafka.topics import ensure_topics
from service.config import Settings
from service.domain.errors import GroupNotFound
from service.domain.results import CommandResult


@contextlib.asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[tuple[ResultWaiter, AIOKafkaProducer]]:
    await ensure_topics(settings)
    waiter = ResultWaiter(settings)
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await waiter.start()
    await producer.start()
    try:
        yield waiter, producer
    finally:
        await producer.stop()
        await waiter.stop()


async def send_result(
    producer: AIOKafkaProducer, settings: Settings, command_id: str, correlation_id: str
) -> None:
    result = CommandResult.rejected(command_id, "org_a", GroupNotFound("grp_x"))
    await producer.send_and_wait(
        settings.topic_results,
        orjson.dumps(result.to_json()),
        key=b"org_a",
        headers=[("correlation_id", correlation_id.encode())],
    )


async def test_results_are_read_only_while_a_request_awaits_one(settings: Settings) -> None:
    async with started(settings) as (waiter, producer):
        assert not waiter.reading
        # Sent while nobody waits: never read, not even by a later request with its id.
        await send_result(producer, settings, "c0", "early")

        async with waiter.expect("early") as early, waiter.expect("first") as first:
            assert waiter.reading
            await send_result(producer, settings, "c1", "first")
            async with asyncio.timeout(10):
                result = await first
            assert (result.command_id, result.code) == ("c1", 404)
        assert not early.done()
        assert not waiter.reading

        async with waiter.expect("second") as second:
            assert waiter.reading
            await send_result(producer, settings, "c2", "second")
            async with asyncio.timeout(10):
                assert (await second).command_id == "c2"
        assert not waiter.reading
