"""Tracing is configured by the standard OTEL_* variables only, and off unless asked for."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import pytest
from aiokafka.structs import ConsumerRecord
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanKind
from prometheus_client import generate_latest

from service.adapters.otlp import Encoder, SpanShape, encode_spans, link_to
from service.adapters.span_queue import Batching, SpanQueue
from service.observability import Metrics
from service.parsing import Invalid
from service.spans import CommandSpans, SendSpans
from service.tracing import HotTracer, Sampling, tracing_from_environment
from tests.otlp_receiver import capturing_tracing, decode

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {**ENDPOINT, "OTEL_SDK_DISABLED": "true"},
        {**ENDPOINT, "OTEL_SDK_DISABLED": " TRUE "},
        {**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"},
    ],
    ids=["no endpoint", "disabled", "disabled, spaced and upper case", "exporter none"],
)
def test_tracing_is_off_unless_an_endpoint_is_set_and_the_sdk_is_not_disabled(
    environ: dict[str, str],
) -> None:
    tracing = tracing_from_environment(environ)
    assert not tracing.enabled
    assert tracing.provider is None


@pytest.mark.parametrize(
    "environ",
    [ENDPOINT, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}],
    ids=["endpoint", "traces endpoint"],
)
def test_an_endpoint_turns_tracing_on_with_the_service_s_name_by_default(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    tracing = tracing_from_environment(environ)
    try:
        assert tracing.enabled
        assert tracing.provider is not None
        assert tracing.provider.resource.attributes["service.name"] == "customer-groups"
    finally:
        tracing.shutdown()


def test_otel_service_name_wins_over_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "groups-eu")
    tracing = tracing_from_environment(ENDPOINT)
    try:
        assert tracing.provider is not None
        assert tracing.provider.resource.attributes["service.name"] == "groups-eu"
    finally:
        tracing.shutdown()


def test_a_protocol_other_than_http_protobuf_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL='grpc' is not supported"):
        tracing_from_environment({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


def test_send_spans_continue_their_row_s_trace_and_their_traceparent_is_theirs() -> None:
    tracing, exporter = capturing_tracing()
    spans = SendSpans(tracing, "events")

    sent = spans.start(PARENT, "group.created", ("org_a", "grp_1", "ev-1", "cmd-1"))
    unparented = spans.start(None, "group.updated", ("org_a", "grp_2", "ev-2", "cmd-2"))
    spans.end(RuntimeError("refused"))

    first, second = exporter.spans
    assert sent == f"00-{first.trace_id}-{first.span_id}-01"
    assert (first.trace_id, first.parent_span_id) == (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
    )
    assert first.name == "send events" and first.kind == 4  # PRODUCER
    assert first.attributes == {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "events",
        "customer_groups.organization_id": "org_a",
        "customer_groups.group_id": "grp_1",
        "cloudevents.event_type": "group.created",
        "messaging.message.id": "ev-1",
        "customer_groups.command_id": "cmd-1",
        "error.type": "RuntimeError",
    }
    assert first.status_code == 2
    assert second.parent_span_id == "" and unparented == f"00-{second.trace_id}-{second.span_id}-01"
    assert second.attributes["cloudevents.event_type"] == "group.updated"
    assert second.attributes["messaging.message.id"] == "ev-2"


@pytest.mark.parametrize(
    ("sampler", "parent_flags", "sampled"),
    [
        ("always_on", 0, True),
        ("always_off", 1, False),
        ("parentbased_always_on", 0, False),
        ("parentbased_always_on", 1, True),
        ("parentbased_always_on", None, True),
        ("parentbased_always_off", None, False),
        ("parentbased_always_off", 1, True),
        ("no_such_sampler", None, True),
    ],
)
def test_sampling_decides_as_the_specification_s_samplers(
    sampler: str, parent_flags: int | None, sampled: bool
) -> None:
    parent = None if parent_flags is None else f"{PARENT[:-2]}{parent_flags:02x}"
    assert Sampling(sampler).sampled(parent, (12345).to_bytes(16, "big")) is sampled


@pytest.mark.parametrize("sampler", ["always_on", "always_off", "parentbased_always_off"])
@pytest.mark.parametrize("flags", ["00", "01", "02", "03", "0f", "fe", "ff"])
def test_a_hot_span_s_sampling_is_the_specification_s(sampler: str, flags: str) -> None:
    sampling = Sampling(sampler)
    shape = SpanShape("t", SpanKind.CONSUMER, {}, ())
    span, traceparent = HotTracer(sampling, lambda _: None).start(shape, PARENT[:-2] + flags, ())
    sampled = sampling.sampled(PARENT[:-2] + flags, bytes.fromhex(PARENT[3:35]))
    assert (span is not None, traceparent[-2:]) == (sampled, "01" if sampled else "00")


def test_a_trace_id_ratio_samples_that_share_of_trace_ids_as_the_sdk_does() -> None:
    sampling = Sampling.from_environment(
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    )
    trace_ids = [random.getrandbits(128) for _ in range(4000)]
    ours = [sampling.sampled(None, t.to_bytes(16, "big")) for t in trace_ids]
    sdk = [sampling.sdk.should_sample(None, t, "span").decision.is_sampled() for t in trace_ids]  # type: ignore[no-untyped-call]
    assert ours == sdk
    assert 0.2 < sum(ours) / len(ours) < 0.3


@given(
    values=st.tuples(
        st.text(max_size=300) | st.none(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.none(),
        st.text(max_size=2000) | st.none(),
    ),
    parent=st.integers(min_value=0, max_value=2**64 - 1),
    times=st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
    links=st.integers(0, 3),
    error=st.text(max_size=50) | st.none(),
)
def test_a_hot_span_decodes_to_what_was_recorded(
    values: tuple[str | None, int | None, str | None],
    parent: int,
    times: tuple[int, int],
    links: int,
    error: str | None,
) -> None:
    shape = SpanShape("process t", SpanKind.CONSUMER, {"k": "v", "n": 7}, ("a", "offset", "c"))
    ids = ((2**127 + 5).to_bytes(16, "big"), (2**63 + 9).to_bytes(8, "big"))
    span = (shape, *ids, parent.to_bytes(8, "big") if parent else b"", times[0], values)
    linked = [(bytes([n]) * 16, bytes([n + 1]) * 8) for n in range(links)]
    link = b"".join(link_to(*ids) for ids in linked)
    [encoded] = encode_spans([span], times[1], link, error)
    request = Encoder(Resource.create({"service.name": "x"}), "scope").request([encoded])

    [decoded] = decode(request)
    expected: dict[str, object] = {"k": "v", "n": 7}
    expected |= {k: v for k, v in zip(("a", "offset", "c"), values, strict=True) if v is not None}
    if error is not None:
        expected["error.type"] = error
    assert decoded.attributes == expected
    assert decoded.parent_span_id == (f"{parent:016x}" if parent else "")
    assert (decoded.trace_id, decoded.span_id) == (f"{2**127 + 5:032x}", f"{2**63 + 9:016x}")
    assert decoded.links == [(t.hex(), s.hex()) for t, s in linked]
    assert decoded.status_code == (0 if error is None else 2)
    assert (decoded.name, decoded.kind, decoded.service_name) == ("process t", 5, "x")
    [raw] = ExportTraceServiceRequest.FromString(request).resource_spans[0].scope_spans[0].spans
    assert (raw.start_time_unix_nano, raw.end_time_unix_nano) == times
    assert raw.flags == (0x301 if parent else 0x101)


@pytest.mark.parametrize("sampler", ["always_on", "parentbased_always_off"])
def test_the_batch_span_is_the_parent_of_what_the_batch_does(sampler: str) -> None:
    tracing, exporter = capturing_tracing(sampler)
    spans = CommandSpans(tracing, "commands", "cg")
    for position, (partition, offset) in enumerate([(3, 7), (3, 8), (5, 7)]):
        record = ConsumerRecord("commands", partition, offset, 0, 0, b"k", b"{}", None, 1, 2, [])
        command = Invalid("not_json", "", malformed=True, command_id=f"c-{position}")
        spans.start(position, record, PARENT, command)
    spans.fail(1, "not_json")

    with spans.batch(3), tracing.tracer.start_as_current_span("write commands"):
        pass
    spans.end()

    if sampler == "parentbased_always_off":  # the producer's sampled flag decides the command's
        assert [s.name for s in exporter.spans] == ["process commands"] * 3
        return
    [write] = [s for s in exporter.spans if s.name == "write commands"]
    [batch] = [s for s in exporter.spans if "messaging.batch.message_count" in s.attributes]
    commands = [s for s in exporter.spans if "messaging.kafka.offset" in s.attributes]
    assert (write.trace_id, write.parent_span_id) == (batch.trace_id, batch.span_id)
    assert batch.parent_span_id == ""
    assert sorted(batch.links) == sorted((s.trace_id, s.span_id) for s in commands)
    assert all(s.links == [(batch.trace_id, batch.span_id)] for s in commands)
    by_id = {s.attributes["customer_groups.command_id"]: s for s in commands}
    assert {
        k: (
            s.attributes["messaging.destination.partition.id"],
            s.attributes["messaging.kafka.offset"],
            s.status_code,
        )
        for k, s in by_id.items()
    } == {
        "c-0": ("3", 7, 0),
        "c-1": ("3", 8, 2),
        "c-2": ("5", 7, 0),
    }
    assert by_id["c-1"].attributes["error.type"] == "not_json"


def test_the_span_queue_sends_full_batches_and_what_is_left_when_it_stops() -> None:
    sent: list[list[bytes]] = []

    def send(batch: Sequence[bytes]) -> bool:
        sent.append(list(batch))
        return True

    queue = SpanQueue(
        send,
        Batching(schedule_delay_s=60, max_queue_size=10, max_export_batch_size=4),
    )
    queue.put([b"a", b"b", b"c"])
    queue.put([b"d", b"e"])
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sent == [[b"a", b"b", b"c", b"d"]]

    queue.put([bytes([n]) for n in range(20)])  # 9 places left of 10
    queue.shutdown()

    assert queue.dropped == 11
    assert [len(b) for b in sent] == [4, 4, 4, 2] and sent[1][0] == b"e"


def test_the_span_queue_counts_what_the_collector_refused() -> None:
    queue = SpanQueue(lambda _: False, Batching(max_export_batch_size=2))
    queue.put([b"a", b"b", b"c"])
    queue.shutdown()
    assert (queue.failed, queue.dropped) == (3, 0)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, Batching(5.0, 30.0, 16_384, 2_048)),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "100"}, Batching(5.0, 30.0, 100, 100)),
        ({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "64"}, Batching(5.0, 30.0, 2_048, 64)),
        (
            {"OTEL_BSP_SCHEDULE_DELAY": "250", "OTEL_BSP_EXPORT_TIMEOUT": "x"},
            Batching(0.25, 30.0, 16_384, 2_048),
        ),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "-3"}, Batching(5.0, 30.0, 2_048, 512)),
    ],
)
def test_the_span_queue_is_sized_by_otel_bsp(environ: dict[str, str], expected: Batching) -> None:
    assert Batching.from_environment(environ) == expected


def test_spans_lost_are_counted_in_the_metrics() -> None:
    queue = SpanQueue(lambda _: False, Batching(max_queue_size=2, max_export_batch_size=2))
    queue.put([b"a", b"b", b"c"])
    queue.shutdown()
    text = generate_latest(Metrics(queue.lost).registry).decode()
    assert 'customer_groups_spans_lost_total{reason="queue_full"} 1.0' in text
    assert 'customer_groups_spans_lost_total{reason="not_exported"} 2.0' in text
