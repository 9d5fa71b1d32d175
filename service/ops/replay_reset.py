"""`replay --mode reset`: the service's consumer-group offsets moved back, so that the
stopped service re-consumes the range itself when it starts (see replay.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from service.adapters.kafka.clients import client_options
from service.config import Settings
from service.ops.common import (
    OpsError,
    reader,
)
from service.ops.replay import (
    Start,
    committed_offsets,
    plan,
    refuse_beyond_processed_retention,
)


@dataclass(frozen=True, slots=True)
class PartitionReset:
    partition: int
    committed: int | None
    target: int

    @property
    def replayed(self) -> int:
        """Only backwards: a reset never skips commands the service has not consumed yet."""
        if self.committed is None or self.target >= self.committed:
            return 0
        return self.committed - self.target

    def to_json(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "committed": self.committed,
            "new": self.target if self.replayed else self.committed,
            "replayed": self.replayed,
        }


@dataclass(frozen=True, slots=True)
class ResetOutcome:
    group: str
    topic: str
    partitions: list[PartitionReset]
    members: list[str]
    dry_run: bool

    @property
    def replayed(self) -> int:
        return sum(p.replayed for p in self.partitions)

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": "reset",
            "group": self.group,
            "topic": self.topic,
            "dry_run": self.dry_run,
            "active_members": self.members,
            "replayed": self.replayed,
            "partitions": [p.to_json() for p in self.partitions],
        }


async def group_members(admin: AIOKafkaAdminClient, group: str) -> list[str]:
    """The group's active members, as `client_id@host`."""
    [response] = await admin.describe_consumer_groups([group])
    [described] = response.to_object()["groups"]
    return [f"{m['client_id']}@{m['client_host'].lstrip('/')}" for m in described["members"]]


async def _wait_until_empty(admin: AIOKafkaAdminClient, group: str, wait_s: float) -> list[str]:
    members = await group_members(admin, group)
    waited = 0
    while members and waited < wait_s:
        await asyncio.sleep(1)
        waited += 1
        members = await group_members(admin, group)
    return members


async def reset_offsets(
    settings: Settings,
    start: Start,
    *,
    dry_run: bool = False,
    wait_s: float = 0,
    beyond_retention: bool = False,
) -> ResetOutcome:
    """Move the service's committed offsets back to `start`; the service then re-consumes."""
    group, topic = settings.kafka_consumer_group, settings.topic_commands
    async with reader(settings) as consumer:
        span = await plan(consumer, settings, start)
        if not beyond_retention:
            await refuse_beyond_processed_retention(consumer, settings, span, datetime.now(UTC))
    admin = AIOKafkaAdminClient(**client_options(settings), client_id=settings.kafka_client_id)
    await admin.start()
    try:
        members = await _wait_until_empty(admin, group, 0 if dry_run else wait_s)
        if members and not dry_run:
            raise OpsError(
                f"refusing: consumer group {group!r} has {len(members)} active member(s) "
                f"({', '.join(members)}). Kafka moves a group's offsets only while the group "
                "is empty: stop the service's consumers first (or pass --wait SECONDS to wait "
                "for that), or replay alongside the running service with --mode oneoff."
            )
        committed = await committed_offsets(admin, group, list(span.start))
    finally:
        await admin.close()
    resets = [
        PartitionReset(tp.partition, committed[tp], target)
        for tp, target in sorted(span.start.items())
    ]
    outcome = ResetOutcome(group, topic, resets, members, dry_run)
    moving = {TopicPartition(topic, p.partition): p.target for p in resets if p.replayed}
    if dry_run or not moving:
        return outcome
    committer = AIOKafkaConsumer(
        **client_options(settings), group_id=group, enable_auto_commit=False
    )
    await committer.start()
    try:
        committer.assign(list(moving))
        await committer.commit(moving)
    except KafkaError as error:
        raise OpsError(
            f"Kafka refused to move the offsets of group {group!r} ({error!r}); most likely "
            "a member joined meanwhile. Run again once the group is empty (see --dry-run)."
        ) from error
    finally:
        await committer.stop()
    return outcome
