"""The consumer's delivery rules, with the store and the publisher faked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from service.adapters.kafka import DeadLetter, Reply
from service.domain.ports import AnyCommand
from service.entrypoints.consumer import LANE_MIN_COMMANDS, CommandConsumer, Pipeline, split_lanes
from service.handlers import Incoming
from service.observability import Metrics, is_transient
from tests.unit.fakes import FakeBatch, FakeCommandStore
from tests.unit.fakes import create as create_command

MAX = 1024 * 1024


def record(offset: int, value: bytes | None, headers: Sequence[tuple[str, Any]] = ()) -> Any:
    return ConsumerRecord(
        "commands", 0, offset, 0, 0, b"org_a", value, None, 5, len(value or b""), list(headers)
    )


def create(command_id: str, name: str, organization_id: str = "org_a") -> bytes:
    body = {"command_id": command_id, "type": "group.create", "organization_id": organization_id}
    return json.dumps({**body, "name": name}).encode()


class FakePublisher:
    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.replies: list[Reply] = []
        self.dead: list[DeadLetter] = []
        self._failures = failures or []

    async def send(self, replies: Sequence[Reply], dead: Sequence[DeadLetter] = ()) -> None:
        if self._failures:
            raise self._failures.pop(0)
        self.replies.extend(replies)
        self.dead.extend(dead)

    def codes(self) -> dict[str, int]:
        return {r.result.command_id: r.result.code for r in self.replies}


class FailingStore(FakeCommandStore):
    """Raises `error` for any batch that holds `poison`, or for the next `times` batches."""

    def __init__(self, error: Exception, poison: str | None = None, times: int = 0) -> None:
        super().__init__()
        self._error = error
        self._poison = poison
        self._times = times
        self.attempts = 0

    @asynccontextmanager
    async def batch(self, commands: Sequence[AnyCommand]) -> AsyncIterator[FakeBatch]:
        self.attempts += 1
        if self._times > 0 or any(c.command_id == self._poison for c in commands):
            self._times -= 1
            raise self._error
        async with super().batch(commands) as staged:
            yield staged


class ConcurrentStore(FakeCommandStore):
    """Notes each batch's organizations and how many batches were open at once; fails the
    first `failures` batches with a transient error."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.batches: list[set[str]] = []
        self.most_open = 0
        self._open = 0
        self._failures = failures

    @asynccontextmanager
    async def batch(self, commands: Sequence[AnyCommand]) -> AsyncIterator[FakeBatch]:
        self.batches.append({c.organization_id for c in commands})
        self._open += 1
        self.most_open = max(self.most_open, self._open)
        try:
            await asyncio.sleep(0.01)
            if self._failures > 0:
                self._failures -= 1
                raise ConnectionRefusedError("postgres is down")
            async with super().batch(commands) as staged:
                yield staged
        finally:
            self._open -= 1


def consumer(store: FakeCommandStore, publisher: FakePublisher) -> CommandConsumer:
    return CommandConsumer(store, publisher, Metrics(), MAX, retry_max_s=0.01)  # type: ignore[arg-type]


async def test_a_batch_gets_one_result_per_command_and_dead_letters_in_one_send() -> None:
    store, publisher = FakeCommandStore(), FakePublisher()
    records = [
        record(0, create("c1", "A")),
        record(1, b"not json"),
        record(2, create("c2", "a")),
        record(3, json.dumps({"command_id": "c3", "organization_id": "org_a"}).encode()),
        record(4, create("c4", " ")),
    ]
    await consumer(store, publisher).handle_records(records)

    assert [r.result.command_id for r in publisher.replies] == ["c1", "c2", "c3", "c4"]
    assert publisher.codes() == {"c1": 201, "c2": 409, "c3": 422, "c4": 422}
    assert [(d.record.offset, d.reason) for d in publisher.dead] == [
        (1, "not_json"),
        (3, "invalid_schema"),
    ]
    assert store.commits == 1


async def test_reply_to_and_correlation_id_come_from_the_headers() -> None:
    publisher = FakePublisher()
    headers = [("reply_to", b"replies"), ("correlation_id", b"c-9"), ("x", None)]
    await consumer(FakeCommandStore(), publisher).handle_records(
        [record(0, create("c1", "A"), headers), record(1, create("c2", "B"), [("reply_to", None)])]
    )
    assert [(r.reply_to, r.correlation_id) for r in publisher.replies] == [
        ("replies", b"c-9"),
        (None, None),
    ]


async def test_a_command_that_fails_for_good_is_isolated_and_dead_lettered() -> None:
    store = FailingStore(RuntimeError("a bug"), poison="c2")
    publisher = FakePublisher()
    records = [
        record(0, create("c1", "A")),
        record(1, create("c2", "B")),
        record(2, b"[]"),
        record(3, create("c3", "C")),
    ]
    await consumer(store, publisher).handle_records(records)

    assert publisher.codes() == {"c1": 201, "c3": 201}
    assert [(d.record.offset, d.reason) for d in publisher.dead] == [
        (1, "processing_failed"),
        (2, "not_object"),
    ]
    assert "a bug" in publisher.dead[0].error
    assert sorted(g.name for g in store.groups.values()) == ["A", "C"]


async def test_a_transient_failure_is_retried_until_it_passes_and_never_dead_lettered() -> None:
    store = FailingStore(ConnectionRefusedError("postgres is down"), times=3)
    publisher = FakePublisher()
    metrics = Metrics()
    subject = CommandConsumer(store, publisher, metrics, MAX, retry_max_s=0.01)  # type: ignore[arg-type]

    await subject.handle_records([record(0, create("c1", "A")), record(1, create("c2", "B"))])

    assert store.attempts == 4
    assert publisher.codes() == {"c1": 201, "c2": 201}
    assert publisher.dead == []
    assert metrics.registry.get_sample_value("customer_groups_transient_errors_total") == 3


def test_a_large_batch_is_shared_among_lanes_by_whole_organizations_in_order() -> None:
    sizes = {"org_a": 150, "org_b": 90, "org_c": 60, "org_d": 30}
    incoming = [
        (position, Incoming(create_command(f"G{position}", organization)))
        for position, organization in enumerate(o for o, n in sizes.items() for _ in range(n))
    ]

    lanes = split_lanes(incoming, 2)

    assert sorted(len(lane) for lane in lanes) == [150, 180]
    assert sorted(entry for lane in lanes for entry in lane) == incoming
    for lane in lanes:
        assert [position for position, _ in lane] == sorted(position for position, _ in lane)
    owners = [{item.command.organization_id for _, item in lane} for lane in lanes]
    assert owners[0].isdisjoint(owners[1])


def test_a_lane_is_opened_only_for_each_lane_min_commands() -> None:
    incoming = [
        (position, Incoming(create_command(f"G{position}", f"org_{position % 4}")))
        for position in range(2 * LANE_MIN_COMMANDS)
    ]
    assert split_lanes(incoming[:-1], 4) == [incoming[:-1]]
    assert len(split_lanes(incoming, 4)) == 2
    assert split_lanes(incoming, 1) == [incoming]


async def test_lanes_run_at_once_and_results_keep_the_records_order() -> None:
    store, publisher = ConcurrentStore(), FakePublisher()
    count = 3 * LANE_MIN_COMMANDS
    records = [record(i, create(f"c{i}", f"G{i}", f"org_{i % 3}")) for i in range(count)]
    subject = CommandConsumer(store, publisher, Metrics(), MAX, lanes=3)  # type: ignore[arg-type]

    await subject.handle_records(records)

    assert store.most_open == 3
    assert sorted(len(organizations) for organizations in store.batches) == [1, 1, 1]
    assert [r.result.command_id for r in publisher.replies] == [f"c{i}" for i in range(count)]
    assert set(publisher.codes().values()) == {201}


async def test_a_lane_that_fails_is_retried_with_its_batch_without_a_second_effect() -> None:
    store, publisher = ConcurrentStore(failures=1), FakePublisher()
    count = 2 * LANE_MIN_COMMANDS
    records = [record(i, create(f"c{i}", f"G{i}", f"org_{i % 2}")) for i in range(count)]
    subject = CommandConsumer(store, publisher, Metrics(), MAX, retry_max_s=0.01, lanes=2)  # type: ignore[arg-type]

    await subject.handle_records(records)

    # The lane that did commit is applied again on the retry, which finds its results.
    assert len(store.batches) == 4
    assert store.most_open == 2
    assert len(store.groups) == count
    assert len(store.outbox) == count
    assert publisher.codes() == {f"c{i}": 201 for i in range(count)}
    assert publisher.dead == []


async def test_results_lost_on_the_way_out_are_sent_again_without_a_second_effect() -> None:
    store = FakeCommandStore()
    publisher = FakePublisher([KafkaConnectionError("broker gone")])

    await consumer(store, publisher).handle_records([record(0, create("c1", "A"))])

    # Only the sending is retried: the batch was committed once.
    assert store.commits == 1
    assert len(store.groups) == 1
    assert len(store.outbox) == 1
    assert publisher.codes() == {"c1": 201}


async def test_a_result_kafka_refuses_as_too_large_is_dead_lettered_not_retried_forever() -> None:
    assert not is_transient(MessageSizeTooLargeError("too big"))
    assert is_transient(KafkaConnectionError("gone"))
    assert is_transient(ConnectionRefusedError())
    store = FakeCommandStore()
    publisher = FakePublisher([MessageSizeTooLargeError("too big")])

    await consumer(store, publisher).handle_records([record(0, create("c1", "A"))])

    assert publisher.replies == []
    assert [(d.record.offset, d.reason) for d in publisher.dead] == [(0, "processing_failed")]
    assert len(store.groups) == 1


class GatedPublisher(FakePublisher):
    """Kafka that acknowledges nothing until the gate opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def send(self, replies: Sequence[Reply], dead: Sequence[DeadLetter] = ()) -> None:
        await self.gate.wait()
        await super().send(replies, dead)


async def ignore(offsets: dict[TopicPartition, int]) -> None:
    pass


async def test_the_pipeline_commits_offsets_only_after_results_are_acknowledged_in_order() -> None:
    store, publisher = FakeCommandStore(), GatedPublisher()
    committed: list[dict[TopicPartition, int]] = []

    async def commit(offsets: dict[TopicPartition, int]) -> None:
        committed.append(offsets)

    pipeline = Pipeline(consumer(store, publisher), depth=2)
    await pipeline.feed([record(0, create("c1", "A")), record(1, create("c2", "B"))], commit)
    await pipeline.feed([record(2, create("c3", "C"))], commit)

    # Both batches are in PostgreSQL while Kafka has acknowledged nothing: nothing is committed.
    assert store.commits == 2
    await asyncio.sleep(0.05)
    assert committed == []

    publisher.gate.set()
    await pipeline.drain(5)
    assert committed == [{TopicPartition("commands", 0): 2}, {TopicPartition("commands", 0): 3}]
    assert publisher.codes() == {"c1": 201, "c2": 201, "c3": 201}


async def test_the_pipeline_waits_for_kafka_when_depth_batches_are_unacknowledged() -> None:
    store, publisher = FakeCommandStore(), GatedPublisher()

    pipeline = Pipeline(consumer(store, publisher), depth=1)
    await pipeline.feed([record(0, create("c1", "A"))], ignore)
    second = asyncio.create_task(pipeline.feed([record(1, create("c2", "B"))], ignore))
    await asyncio.sleep(0.05)
    assert store.commits == 1
    assert not second.done()

    publisher.gate.set()
    await second
    await pipeline.drain(5)
    assert store.commits == 2


async def test_after_a_batch_fails_beyond_isolation_nothing_later_is_committed() -> None:
    store = FakeCommandStore()
    publisher = FakePublisher(failures=[RuntimeError("unforeseen")] * 3)
    committed: list[dict[TopicPartition, int]] = []

    async def commit(offsets: dict[TopicPartition, int]) -> None:
        committed.append(offsets)

    pipeline = Pipeline(consumer(store, publisher))
    await pipeline.feed([record(0, create("c1", "A"))], commit)
    await asyncio.sleep(0.05)
    with pytest.raises(RuntimeError, match="pipeline stopped"):
        await pipeline.feed([record(1, create("c2", "B"))], commit)
    await pipeline.drain(1)
    assert committed == []
    assert "pipeline" in pipeline.health.problems


async def test_drain_stops_what_is_still_in_flight_when_its_time_is_up() -> None:
    """An offset commit in flight when the subscriber stopped its consumer never returns;
    the batch stays uncommitted (its records come again) and no task outlives the service."""
    never = asyncio.Event()

    async def commit_that_hangs(offsets: dict[TopicPartition, int]) -> None:
        await never.wait()

    pipeline = Pipeline(consumer(FakeCommandStore(), FakePublisher()))
    await pipeline.feed([record(0, create("c1", "A"))], commit_that_hangs)
    in_flight = list(pipeline._pending)
    await pipeline.drain(0.1)
    assert in_flight
    assert all(task.done() for task in in_flight)
