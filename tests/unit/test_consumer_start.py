"""Where the command consumer starts, with Kafka faked: leaders awaited, and partitions with no
committed offset started within the processed-command retention."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import OffsetAndTimestamp

from service.adapters.kafka.consumer_start import StartWithinRetention
from service.adapters.kafka.topics import TopicsNotReady, not_ready, wait_for_leaders
from service.config import Settings

NOW_S = 1_000_000.0
DAY_MS = 86_400_000
TOPIC = "customer-groups.commands"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


def topic(name: str, leaders: list[int], error_code: int = 0) -> dict[str, Any]:
    partitions = [
        {"error_code": 0, "partition": i, "leader": leader, "replicas": [1], "isr": [1]}
        for i, leader in enumerate(leaders)
    ]
    return {"error_code": error_code, "topic": name, "is_internal": False, "partitions": partitions}


def test_not_ready_names_each_topic_that_cannot_be_consumed_yet() -> None:
    described = [
        topic("ready", [1, 1]),
        topic("unknown", [], error_code=3),
        topic("empty", []),
        topic("electing", [1, -1, -1]),
    ]
    assert not_ready(described) == {
        "unknown": "error code 3",
        "empty": "no partitions",
        "electing": "no leader for partition(s) 1, 2",
    }


class FakeAdmin:
    def __init__(self, *answers: list[dict[str, Any]]) -> None:
        self.answers = list(answers)
        self.asked = 0

    async def describe_topics(self, topics: list[str]) -> list[dict[str, Any]]:
        self.asked += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


async def test_waits_until_every_partition_has_a_leader() -> None:
    admin = FakeAdmin([topic("t", [-1, -1])], [topic("t", [1, -1])], [topic("t", [1, 1])])
    await wait_for_leaders(admin, ["t"], timeout_s=5)
    assert admin.asked == 3


async def test_gives_up_with_what_is_missing() -> None:
    admin = FakeAdmin([topic("t", [1, -1])])
    with pytest.raises(TopicsNotReady, match=r"t: no leader for partition\(s\) 1"):
        await wait_for_leaders(admin, ["t"], timeout_s=0.2)


class FakeConsumer:
    """A consumer's offsets: committed, first, last, and the first at or after a time."""

    def __init__(
        self,
        committed: dict[TopicPartition, int | None],
        first: dict[TopicPartition, int],
        end: dict[TopicPartition, int],
        by_time: dict[TopicPartition, int | None],
        failures: int = 0,
    ) -> None:
        self._committed, self._first, self._end, self._by_time = committed, first, end, by_time
        self._failures = failures
        self.calls: list[tuple[Any, ...]] = []
        self.asked_since_ms: set[int] = set()

    def pause(self, *tps: TopicPartition) -> None:
        self.calls.append(("pause", set(tps)))

    def resume(self, *tps: TopicPartition) -> None:
        self.calls.append(("resume", set(tps)))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.calls.append(("seek", tp, offset))

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.calls.append(("commit", offsets))

    async def committed(self, tp: TopicPartition) -> int | None:
        if self._failures:
            self._failures -= 1
            raise KafkaTimeoutError()
        return self._committed[tp]

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._first[tp] for tp in tps}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._end[tp] for tp in tps}

    async def offsets_for_times(
        self, times: dict[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        self.asked_since_ms.update(times.values())
        found = {tp: self._by_time[tp] for tp in times}
        return {tp: None if at is None else OffsetAndTimestamp(at, 0) for tp, at in found.items()}


def listener(consumer: FakeConsumer, **settings: Any) -> StartWithinRetention:
    values = Settings(_env_file=None, processed_commands_retention_days=2, **settings)
    return StartWithinRetention(values, lambda: consumer, clock=lambda: NOW_S)


async def test_a_committed_partition_is_left_where_it_is() -> None:
    consumer = FakeConsumer({P0: 42}, {P0: 0}, {P0: 50}, {P0: 10})
    await listener(consumer).on_partitions_assigned({P0})
    assert consumer.calls == [("pause", {P0}), ("resume", {P0})]


async def test_no_committed_offset_starts_within_retention_and_commits_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = FakeConsumer({P0: None, P1: 7}, {P0: 100, P1: 0}, {P0: 500, P1: 9}, {P0: 130, P1: 0})
    await listener(consumer).on_partitions_assigned({P0, P1})
    assert consumer.calls == [
        ("pause", {P0, P1}),
        ("seek", P0, 130),
        ("commit", {P0: 130}),
        ("resume", {P0, P1}),
    ]
    assert consumer.asked_since_ms == {int(NOW_S * 1000) - 2 * DAY_MS}
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "offset 130, skipping 30 command(s)" in warning.getMessage()


async def test_nothing_within_retention_starts_at_the_end() -> None:
    consumer = FakeConsumer({P0: None}, {P0: 100}, {P0: 500}, {P0: None})
    await listener(consumer).on_partitions_assigned({P0})
    assert ("seek", P0, 500) in consumer.calls


async def test_nothing_older_than_retention_is_said_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    consumer = FakeConsumer({P0: None}, {P0: 0}, {P0: 0}, {P0: None})
    await listener(consumer).on_partitions_assigned({P0})
    assert ("seek", P0, 0) in consumer.calls
    assert [r.levelno for r in caplog.records] == [logging.INFO]


async def test_earliest_starts_at_the_beginning_and_warns_of_what_may_apply_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = FakeConsumer({P0: None}, {P0: 100}, {P0: 500}, {P0: 130})
    await listener(consumer, command_start_without_offset="earliest").on_partitions_assigned({P0})
    assert ("seek", P0, 100) in consumer.calls
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "30 command(s) older than" in warning.getMessage()


async def test_partitions_stay_paused_until_kafka_answers() -> None:
    consumer = FakeConsumer({P0: None}, {P0: 0}, {P0: 5}, {P0: 3}, failures=2)
    await listener(consumer).on_partitions_assigned({P0})
    assert consumer.calls == [
        ("pause", {P0}),
        ("seek", P0, 3),
        ("commit", {P0: 3}),
        ("resume", {P0}),
    ]
