"""What the client and the feed share about Kafka."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


class Started:
    """Something with Kafka clients to start and close; `async with` does both."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()


# A topic created a moment ago may take a few metadata rounds to have partition leaders.
TOPIC_WAIT_S = 30.0


async def partitions(
    admin: AIOKafkaAdminClient, topic: str, wait_s: float = TOPIC_WAIT_S
) -> list[TopicPartition]:
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        # Listing first: asking for an unknown topic's metadata can create it.
        if topic in await admin.list_topics():
            [described] = await admin.describe_topics([topic])
            found = described["partitions"]
            if found and all(p["leader"] >= 0 for p in found):
                return [TopicPartition(topic, p["partition"]) for p in found]
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"topic {topic!r} does not exist or has no partitions")
        await asyncio.sleep(0.1)


async def partitions_of(
    servers: str, kafka: dict[str, Any], *topics: str
) -> list[list[TopicPartition]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers, **kafka)
    await admin.start()
    try:
        return [await partitions(admin, topic) for topic in topics]
    finally:
        await admin.close()
