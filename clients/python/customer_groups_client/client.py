"""Commands in, results back: a producer for the commands topic and a reader of a reply
topic of the client's own, never of the whole results topic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from enum import Enum
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner
from pydantic import ValidationError

from customer_groups_client._kafka import Started, partitions
from customer_groups_client.commands import (
    AddCustomers,
    Command,
    CreateGroup,
    DeleteGroup,
    RemoveCustomers,
    UpdateGroup,
)
from customer_groups_client.models import Group, Membership, Result, ResultTimeout
from customer_groups_client.topics import Topics

log = logging.getLogger(__name__)

# Replies are read only while their command waits; a day covers any client's retries.
REPLY_RETENTION_MS = 24 * 3600 * 1000


class _Unset(Enum):
    UNSET = "unset"


UNSET: Final = _Unset.UNSET
_PARTITIONER = DefaultPartitioner()
PARTITIONS_CACHED = 100_000
_Record = tuple[bytes, bytes]


class GroupsClient(Started):
    """Sends commands and waits for their results.

    The service copies each result to the topic a command names in its `reply_to` header;
    this client names `reply_topic` (created when missing) and reads it from its end, so it
    sees only replies, and among them only those it waits for: several clients may share
    a reply topic. A command with no reply within `timeout_s` is sent again, with the same
    `command_id`: the service answers a repeated command with its stored result and never
    applies it twice. `kafka` options (security_protocol, ssl_context, sasl_*) go to every
    Kafka client it makes.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        reply_topic: str,
        topics: Topics | None = None,
        timeout_s: float = 10.0,
        attempts: int = 3,
        reply_topic_replication_factor: int = 1,
        **kafka: Any,
    ) -> None:
        if attempts < 1 or timeout_s <= 0:
            raise ValueError("attempts must be at least 1 and timeout_s positive")
        self._servers = bootstrap_servers
        self._reply_topic = reply_topic
        self._topics = topics or Topics()
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._replication_factor = reply_topic_replication_factor
        self._kafka = kafka
        self._pending: dict[tuple[str, str], asyncio.Future[Result]] = {}
        self._headers = [("reply_to", reply_topic.encode())]
        self._partitions: dict[bytes, tuple[int, int]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        replies = await self._ensure_reply_topic()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._servers, enable_auto_commit=False, **self._kafka
        )
        self._consumer = consumer
        await consumer.start()
        consumer.assign(replies)
        await consumer.seek_to_end(*replies)
        for partition in replies:
            # The position is fixed now, before any command goes out: no reply can be missed.
            await consumer.position(partition)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            **self._kafka,
        )
        await self._producer.start()
        self._reader = asyncio.create_task(self._read_replies(), name="customer-groups-replies")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for future in self._pending.values():
            future.cancel()
        if self._producer is not None:
            await self._producer.stop()
        if self._consumer is not None:
            await self._consumer.stop()

    async def send(self, command: Command) -> Result:
        """The command's result, accepted or rejected; `ResultTimeout` when none came back."""
        [result] = await self._send_all([command])
        return result

    async def send_many(self, commands: Iterable[Command], *, window: int = 1000) -> list[Result]:
        """The results of `commands`, in their order, with at most `window` in flight (two
        halves: one is sent while the other waits). Commands of one organization may be
        applied in any order unless `window` is 1."""
        pending = list(commands)
        if window < 1:
            raise ValueError("window must be at least 1")
        workers = 2 if window > 1 else 1
        size = window // workers
        starts = iter(range(0, len(pending), size))
        results: list[Result] = []

        async def work() -> dict[int, list[Result]]:
            done = {}
            for start in starts:
                done[start] = await self._send_all(pending[start : start + size])
            return done

        gathered: dict[int, list[Result]] = {}
        for done in await asyncio.gather(*(work() for _ in range(workers))):
            gathered.update(done)
        for start in sorted(gathered):
            results += gathered[start]
        return results

    async def _send_all(self, commands: list[Command]) -> list[Result]:
        """Sends them (as record batches), waits for their replies, re-sends those with none
        after `timeout_s`, up to `attempts` times."""
        producer = self._producer
        if producer is None:
            raise RuntimeError("start() the client first")
        loop = asyncio.get_running_loop()
        keys = [(c.organization_id, c.command_id) for c in commands]
        if len(set(keys)) < len(keys) or any(key in self._pending for key in keys):
            raise ValueError("a command_id is already waiting for its result")
        replies: list[asyncio.Future[Result]] = [loop.create_future() for _ in commands]
        self._pending.update(zip(keys, replies, strict=True))
        records = [(c.organization_id.encode(), c.body()) for c in commands]
        waiting = list(range(len(commands)))
        try:
            for attempt in range(self._attempts):
                if attempt:
                    log.info("no result for %d command(s) yet; sending again", len(waiting))
                await self._produce(producer, [records[i] for i in waiting])
                await asyncio.wait([replies[i] for i in waiting], timeout=self._timeout_s)
                waiting = [i for i in waiting if not replies[i].done()]
                if not waiting:
                    return [reply.result() for reply in replies]
            raise ResultTimeout(commands[waiting[0]].command_id, self._attempts, self._timeout_s)
        finally:
            for key in keys:
                del self._pending[key]

    async def _produce(self, producer: AIOKafkaProducer, records: list[_Record]) -> None:
        """One record batch per partition at a time, partitioned by key as every Kafka
        client does: `send` per command costs several times the CPU."""
        topic = self._topics.commands
        partitions = sorted(await producer.partitions_for(topic))
        batches: dict[int, Any] = {}
        sent = []
        for key, body in records:
            partition = self._partition(key, partitions)
            record = {"key": key, "value": body, "timestamp": None, "headers": self._headers}
            batch = batches.get(partition)
            if batch is not None and batch.append(**record):
                continue
            if batch is not None:
                batch.close()
                sent.append(await producer.send_batch(batch, topic, partition=partition))
            batch = batches[partition] = producer.create_batch()
            if not batch.append(**record):
                del batches[partition]  # larger than a batch: `send` sizes one to fit
                sent.append(await producer.send(topic, body, key, partition, self._headers))
        for partition, batch in batches.items():
            batch.close()
            sent.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*sent)

    def _partition(self, key: bytes, partitions: list[int]) -> int:
        # aiokafka's murmur2 is pure Python; an organization's partition is worked out once.
        cached = self._partitions.get(key)
        if cached is None or cached[0] != len(partitions):
            if len(self._partitions) >= PARTITIONS_CACHED:
                self._partitions.clear()
            cached = self._partitions[key] = (
                len(partitions),
                _PARTITIONER(key, partitions, partitions),
            )
        return cached[1]

    async def create(
        self,
        organization_id: str,
        name: str,
        *,
        group_id: str | None = None,
        description: str | None = None,
        platform_id: str | None = None,
        command_id: str | None = None,
    ) -> Group:
        command = CreateGroup(
            organization_id=organization_id,
            name=name,
            group_id=group_id,
            description=description,
            platform_id=platform_id,
            **_id(command_id),
        )
        return (await self.send(command)).accepted_group()

    async def update(
        self,
        organization_id: str,
        group_id: str,
        *,
        name: str | None = None,
        description: str | _Unset | None = UNSET,
        platform_id: str | _Unset | None = UNSET,
        expected_version: int | None = None,
        command_id: str | None = None,
    ) -> Group:
        """Changes the fields given; `description=None` (or `platform_id=None`) clears it."""
        given = {
            field: value
            for field, value in (("description", description), ("platform_id", platform_id))
            if value is not UNSET
        }
        command = UpdateGroup(
            organization_id=organization_id,
            group_id=group_id,
            name=name,
            expected_version=expected_version,
            **given,
            **_id(command_id),
        )
        return (await self.send(command)).accepted_group()

    async def delete(
        self,
        organization_id: str,
        group_id: str,
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
    ) -> Group:
        """The group as it was deleted (`deleted_at` set, its last `customer_count`)."""
        command = DeleteGroup(
            organization_id=organization_id,
            group_id=group_id,
            expected_version=expected_version,
            **_id(command_id),
        )
        return (await self.send(command)).accepted_group()

    async def add_customers(
        self,
        organization_id: str,
        group_id: str,
        customer_ids: list[str],
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
    ) -> Membership:
        """Adds the ids that are not members yet; the others count as unchanged."""
        return await self._change_members(
            AddCustomers,
            organization_id,
            group_id,
            customer_ids,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def remove_customers(
        self,
        organization_id: str,
        group_id: str,
        customer_ids: list[str],
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
    ) -> Membership:
        """Removes the ids that are members; the others count as unchanged."""
        return await self._change_members(
            RemoveCustomers,
            organization_id,
            group_id,
            customer_ids,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def _change_members(
        self,
        kind: type[AddCustomers | RemoveCustomers],
        organization_id: str,
        group_id: str,
        customer_ids: list[str],
        *,
        expected_version: int | None,
        command_id: str | None,
    ) -> Membership:
        command = kind(
            organization_id=organization_id,
            group_id=group_id,
            customer_ids=customer_ids,
            expected_version=expected_version,
            **_id(command_id),
        )
        result = await self.send(command)
        group = result.accepted_group()
        counts = result.customers
        return Membership(
            group=group,
            changed=counts.changed if counts else 0,
            unchanged=counts.unchanged if counts else 0,
        )

    async def _ensure_reply_topic(self) -> list[TopicPartition]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self._servers, **self._kafka)
        await admin.start()
        try:
            if self._reply_topic not in await admin.list_topics():
                await self._create_reply_topic(admin)
            return await partitions(admin, self._reply_topic)
        finally:
            await admin.close()

    async def _create_reply_topic(self, admin: AIOKafkaAdminClient) -> None:
        topic = NewTopic(
            self._reply_topic,
            1,
            self._replication_factor,
            topic_configs={"retention.ms": str(REPLY_RETENTION_MS)},
        )
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([topic])

    async def _read_replies(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    self._reply(record.key, record.value)

    def _reply(self, key: bytes | None, value: bytes | None) -> None:
        if not key or not value:
            return
        try:
            result = Result.model_validate_json(value)
        except ValidationError:
            log.warning("skipped a reply that is not a result")
            return
        reply = self._pending.get((key.decode(errors="replace"), result.command_id))
        if reply is not None and not reply.done():
            reply.set_result(result)  # else another client's, or one no longer waited for


def _id(command_id: str | None) -> dict[str, str]:
    return {} if command_id is None else {"command_id": command_id}
