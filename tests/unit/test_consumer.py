"""The consumer's delivery rules, with the store and the publisher faked."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from service.adapters.kafka.results import DeadLetter, Reply
from service.applier import CommandConsumer
from service.domain.ports import AnyCommand
from service.handlers import Incoming
from service.lanes import LANE_MIN_COMMANDS, LaneOrder, LaneStopped, split_lanes
from service.observability import Metrics
from service.pipeline import Pipeline
from service.retry import is_transient
from tests.otlp_receiver import capturing_tracing
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


def organizations_in_lanes(lanes: int) -> list[str]:
    """One organization per lane, in lane order."""
    found: dict[int, str] = {}
    for n in range(1000):
        found.setdefault(lane_of(f"org_{n}", lanes), f"org_{n}")
    return [found[lane] for lane in range(lanes)]


def lane_of(organization_id: str, lanes: int) -> int:
    incoming = [(0, Incoming(create_command("G", organization_id)))] * (lanes * LANE_MIN_COMMANDS)
    (part,) = split_lanes(incoming, lanes)
    (lane,) = part.lanes
    return lane


def test_a_large_batch_is_shared_among_lanes_by_whole_organizations_in_order() -> None:
    organizations = [f"org_{n}" for n in range(12)]
    incoming = [
        (position, Incoming(create_command(f"G{position}", organizations[position % 12])))
        for position in range(2 * LANE_MIN_COMMANDS)
    ]

    parts = split_lanes(incoming, 2)

    assert [p.lanes for p in parts] == [(0,), (1,)]
    assert sorted(entry for part in parts for entry in part.entries) == incoming
    for part in parts:
        assert [position for position, _ in part.entries] == sorted(
            position for position, _ in part.entries
        )
    owners = [{item.command.organization_id for _, item in part.entries} for part in parts]
    assert owners[0].isdisjoint(owners[1])
    # An organization keeps its lane from batch to batch, whatever else the batch holds.
    for part, owned in zip(parts, owners, strict=True):
        assert all(lane_of(organization, 2) == part.lanes[0] for organization in owned)


def test_a_batch_too_small_to_share_is_one_part_after_every_lane() -> None:
    incoming = [
        (position, Incoming(create_command(f"G{position}", f"org_{position % 4}")))
        for position in range(4 * LANE_MIN_COMMANDS)
    ]
    small = split_lanes(incoming[:-1], 4)
    assert [(p.lanes, p.entries) for p in small] == [(range(4), incoming[:-1])]
    assert len(split_lanes(incoming, 4)) > 1
    assert [(p.lanes, p.entries) for p in split_lanes(incoming, 1)] == [(range(1), incoming)]


async def test_lanes_run_at_once_and_results_keep_the_records_order() -> None:
    store, publisher = ConcurrentStore(), FakePublisher()
    organizations = organizations_in_lanes(3)
    count = 3 * LANE_MIN_COMMANDS
    records = [record(i, create(f"c{i}", f"G{i}", organizations[i % 3])) for i in range(count)]
    subject = CommandConsumer(store, publisher, Metrics(), MAX, lanes=3)  # type: ignore[arg-type]

    await subject.handle_records(records)

    assert store.most_open == 3
    assert sorted(len(organizations) for organizations in store.batches) == [1, 1, 1]
    assert [r.result.command_id for r in publisher.replies] == [f"c{i}" for i in range(count)]
    assert set(publisher.codes().values()) == {201}


async def test_a_lane_that_fails_is_retried_alone_without_a_second_effect() -> None:
    store, publisher = ConcurrentStore(failures=1), FakePublisher()
    organizations = organizations_in_lanes(2)
    count = 2 * LANE_MIN_COMMANDS
    records = [record(i, create(f"c{i}", f"G{i}", organizations[i % 2])) for i in range(count)]
    subject = CommandConsumer(store, publisher, Metrics(), MAX, retry_max_s=0.01, lanes=2)  # type: ignore[arg-type]

    await subject.handle_records(records)

    assert len(store.batches) == 3
    assert store.most_open == 2
    assert len(store.groups) == count
    assert len(store.outbox) == count
    assert publisher.codes() == {f"c{i}": 201 for i in range(count)}
    assert publisher.dead == []


class GatedStore(FakeCommandStore):
    """Holds any batch with a command of `held` until the gate opens; notes the order in
    which batches commit, by their first command."""

    def __init__(self, held: str) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.committed: list[str] = []
        self._held = held

    @asynccontextmanager
    async def batch(self, commands: Sequence[AnyCommand]) -> AsyncIterator[FakeBatch]:
        if any(c.command_id == self._held for c in commands):
            await self.gate.wait()
        async with super().batch(commands) as staged:
            yield staged
        self.committed.append(commands[0].command_id)


async def test_a_lane_goes_on_with_the_next_batch_while_the_other_lane_is_busy() -> None:
    slow, fast = organizations_in_lanes(2)
    store, publisher = GatedStore(held="a0"), FakePublisher()
    committed: list[dict[TopicPartition, int]] = []

    async def commit(offsets: dict[TopicPartition, int]) -> None:
        committed.append(offsets)

    def batch(name: str, first: int) -> list[Any]:
        return [
            record(first + i, create(f"{name}{i}", f"{name}{i}", (slow, fast)[i % 2]))
            for i in range(2 * LANE_MIN_COMMANDS)
        ]

    subject = CommandConsumer(store, publisher, Metrics(), MAX, lanes=2)  # type: ignore[arg-type]
    pipeline = Pipeline(subject, depth=3)
    await pipeline.feed(batch("a", 0), commit)
    await pipeline.feed(batch("b", 200), commit)
    await asyncio.sleep(0.05)

    # The fast lane has done both batches; the slow lane's second part waits for its first.
    assert store.committed == ["a1", "b1"]
    assert committed == []

    store.gate.set()
    await pipeline.drain(5)
    assert store.committed == ["a1", "b1", "a0", "b0"]
    assert committed == [{TopicPartition("commands", 0): 200}, {TopicPartition("commands", 0): 400}]
    assert len(publisher.codes()) == 400


async def test_a_lane_whose_part_did_not_finish_takes_no_more() -> None:
    order = LaneOrder(2)
    ran: list[str] = []

    async def work(name: str, fail: bool = False) -> str:
        await asyncio.sleep(0)
        if fail:
            raise RuntimeError(name)
        ran.append(name)
        return name

    first = order.schedule((0,), lambda: work("first", fail=True))
    after = order.schedule((0,), lambda: work("after"))
    beside = order.schedule((1,), lambda: work("beside"))
    both = order.schedule(range(2), lambda: work("both"))

    assert await beside == "beside"
    for task, error in [(first, RuntimeError), (after, LaneStopped), (both, LaneStopped)]:
        with pytest.raises(error):
            await task
    assert ran == ["beside"]


async def test_results_lost_on_the_way_out_are_sent_again_without_a_second_effect() -> None:
    store = FakeCommandStore()
    publisher = FakePublisher([KafkaConnectionError("broker gone")])

    await consumer(store, publisher).handle_records([record(0, create("c1", "A"))])

    # Only the sending is retried: the batch was committed once.
    assert store.commits == 1
    assert len(store.groups) == 1
    assert len(store.outbox) == 1
    assert publisher.codes() == {"c1": 201}


async def test_a_result_kafka_refuses_as_too_large_is_replaced_not_retried_forever() -> None:
    assert not is_transient(MessageSizeTooLargeError("too big"))
    assert is_transient(KafkaConnectionError("gone"))
    assert is_transient(ConnectionRefusedError())
    # What asyncpg raises when PostgreSQL restarts under a running statement (seen in chaos).
    busy = "cannot switch to state 15; another operation (2) is in progress"
    assert is_transient(asyncpg.InternalClientError(busy))
    store = FakeCommandStore()
    publisher = FakePublisher([MessageSizeTooLargeError("too big")])

    await consumer(store, publisher).handle_records([record(0, create("c1", "A"))])

    assert [(r.result.code, r.result.error) for r in publisher.replies] == [
        (201, "Result not sendable")
    ]
    assert publisher.dead == []
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
    await asyncio.sleep(0.05)

    # Both batches are in PostgreSQL while Kafka has acknowledged nothing: nothing is committed.
    assert store.commits == 2
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


async def test_a_result_kafka_refuses_for_good_is_replaced_by_a_stand_in_and_the_line_goes_on() -> (
    None
):
    store = FakeCommandStore()
    publisher = FakePublisher(failures=[MessageSizeTooLargeError()])
    committed: list[dict[TopicPartition, int]] = []

    async def commit(offsets: dict[TopicPartition, int]) -> None:
        committed.append(offsets)

    pipeline = Pipeline(consumer(store, publisher))
    await pipeline.feed([record(0, create("c1", "A"), [("correlation_id", b"x")])], commit)
    await pipeline.feed([record(1, create("c2", "B"))], commit)
    await pipeline.drain(1)
    [stand_in, normal] = publisher.replies
    assert stand_in.result.command_id == "c1"
    assert (stand_in.result.status, stand_in.result.code) == ("accepted", 201)
    assert stand_in.result.error == "Result not sendable"
    assert (stand_in.result.group, stand_in.correlation_id) == (None, None)
    assert normal.result.group is not None
    assert [list(c.values()) for c in committed] == [[1], [2]]
    assert not pipeline.health.problems


async def test_when_even_the_stand_ins_are_refused_the_line_goes_on_without_them() -> None:
    publisher = FakePublisher(failures=[RuntimeError("unforeseen")] * 3)
    committed: list[dict[TopicPartition, int]] = []

    async def commit(offsets: dict[TopicPartition, int]) -> None:
        committed.append(offsets)

    pipeline = Pipeline(consumer(FakeCommandStore(), publisher))
    await pipeline.feed([record(0, create("c1", "A"))], commit)
    await pipeline.feed([record(1, create("c2", "B"))], commit)
    await pipeline.drain(1)
    assert [r.result.command_id for r in publisher.replies] == ["c2"]
    assert [list(c.values()) for c in committed] == [[1], [2]]


async def test_a_pipeline_that_cannot_go_on_commits_nothing_later_and_asks_to_stop() -> None:
    stopped: list[BaseException] = []
    committed: list[dict[TopicPartition, int]] = []

    async def commit(offsets: dict[TopicPartition, int]) -> None:
        committed.append(offsets)

    subject = consumer(FakeCommandStore(), FakePublisher())

    async def broken(records: Sequence[Any]) -> Any:
        raise LaneStopped("an earlier batch in this lane did not finish")

    subject.apply_records = broken  # type: ignore[method-assign]
    pipeline = Pipeline(subject, on_stopped=stopped.append)
    await pipeline.feed([record(0, create("c1", "A"))], commit)
    await asyncio.sleep(0.05)
    with pytest.raises(RuntimeError, match="pipeline stopped"):
        await pipeline.feed([record(1, create("c2", "B"))], commit)
    await pipeline.drain(1)
    assert committed == []
    assert [type(e) for e in stopped] == [LaneStopped]
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


async def test_a_command_keyed_other_than_by_its_organization_is_applied_and_counted() -> None:
    publisher = FakePublisher()
    metrics = Metrics()
    subject = CommandConsumer(FakeCommandStore(), publisher, metrics, MAX)  # type: ignore[arg-type]
    misrouted = dataclasses.replace(record(1, create("c2", "B", "org_b")), key=b"org_a")
    await subject.handle_records([record(0, create("c1", "A")), misrouted])
    assert publisher.codes() == {"c1": 201, "c2": 201}
    assert metrics.registry.get_sample_value("customer_groups_misrouted_commands_total") == 1


async def test_headers_that_break_their_rule_are_left_out_and_counted() -> None:
    publisher = FakePublisher()
    metrics = Metrics()
    own = frozenset({"events"})
    subject = CommandConsumer(FakeCommandStore(), publisher, metrics, MAX, own_topics=own)  # type: ignore[arg-type]
    headers = [("reply_to", b"events"), ("correlation_id", b"c" * 257), ("reply_to", b"ok")]
    await subject.handle_records([record(0, create("c1", "A"), headers)])
    [reply] = publisher.replies
    assert (reply.reply_to, reply.correlation_id) == (None, None)
    refused = {
        (h, r): metrics.registry.get_sample_value(
            "customer_groups_headers_refused_total", {"header": h, "reason": r}
        )
        for h, r in [("reply_to", "service_topic"), ("correlation_id", "too_long")]
    }
    assert refused == {("reply_to", "service_topic"): 1, ("correlation_id", "too_long"): 1}


PRODUCER_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_with_tracing_a_command_s_span_continues_its_producer_s_and_is_passed_on() -> None:
    tracing, exporter = capturing_tracing()
    store, publisher = FakeCommandStore(), FakePublisher()
    subject = CommandConsumer(
        store,
        publisher,  # type: ignore[arg-type]
        Metrics(),
        MAX,
        tracing=tracing,
        consumer_group="cg",
    )
    traced = [("traceparent", PRODUCER_TRACEPARENT.encode())]
    await subject.handle_records(
        [
            record(0, create("c-1", "VIP"), traced),
            record(1, b"{not json"),
            record(2, create("c-2", "B")),
        ]
    )

    spans = exporter.spans
    by_offset = {
        s.attributes["messaging.kafka.offset"]: s
        for s in spans
        if "messaging.kafka.offset" in s.attributes
    }
    traced_span, malformed, untraced = by_offset[0], by_offset[1], by_offset[2]
    assert traced_span.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert traced_span.parent_span_id == "00f067aa0ba902b7"
    assert untraced.parent_span_id == "" and untraced.trace_id != traced_span.trace_id
    assert traced_span.attributes["messaging.consumer.group.name"] == "cg"
    assert traced_span.attributes["customer_groups.command_id"] == "c-1"
    assert malformed.status_code == 2  # ERROR
    assert malformed.attributes["error.type"] == "not_json"
    assert "customer_groups.command_id" not in malformed.attributes
    # The result and the stored event carry the command's span, not the producer's.
    passed_on = {r.result.command_id: r.traceparent for r in publisher.replies}
    assert passed_on["c-1"] == f"00-{traced_span.trace_id}-{traced_span.span_id}-01"
    assert passed_on["c-2"] == f"00-{untraced.trace_id}-{untraced.span_id}-01"
    assert [r.traceparent for r in store.outbox] == [passed_on["c-1"], passed_on["c-2"]]
    [batch] = [s for s in spans if "messaging.batch.message_count" in s.attributes]
    assert batch.attributes["messaging.batch.message_count"] == 3
    commands = [(s.trace_id, s.span_id) for s in (traced_span, malformed, untraced)]
    assert sorted(batch.links) == sorted(commands)
    assert all(s.links == [(batch.trace_id, batch.span_id)] for s in by_offset.values())


async def test_a_command_whose_producer_did_not_sample_it_is_not_recorded_but_passes_it_on() -> (
    None
):
    tracing, exporter = capturing_tracing("parentbased_always_on")
    store, publisher = FakeCommandStore(), FakePublisher()
    subject = CommandConsumer(store, publisher, Metrics(), MAX, tracing=tracing)  # type: ignore[arg-type]
    unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    await subject.handle_records(
        [record(0, create("c-1", "VIP"), [("traceparent", unsampled.encode())])]
    )

    assert not [s for s in exporter.spans if "messaging.kafka.offset" in s.attributes]
    [passed_on] = [r.traceparent for r in publisher.replies]
    assert passed_on is not None
    assert passed_on.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert passed_on.endswith("-00") and passed_on != unsampled


async def test_without_tracing_the_producer_s_traceparent_passes_through() -> None:
    store, publisher = FakeCommandStore(), FakePublisher()
    traced = [("traceparent", PRODUCER_TRACEPARENT.encode())]
    await consumer(store, publisher).handle_records([record(0, create("c-1", "VIP"), traced)])

    assert [r.traceparent for r in publisher.replies] == [PRODUCER_TRACEPARENT]
    assert [r.traceparent for r in store.outbox] == [PRODUCER_TRACEPARENT]
