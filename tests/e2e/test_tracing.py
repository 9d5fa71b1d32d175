"""Traces on the real services, exported over OTLP/HTTP to a receiver this test runs."""

from __future__ import annotations

import json
from collections.abc import Iterator

import asyncpg
import pytest

from service.adapters.kafka import Record
from service.config import Settings
from service.tracing import tracing_from_environment
from tests.e2e.http_support import GROUPS, ORG_A, running_app
from tests.otlp_receiver import ExportedSpan, OtlpReceiver
from tests.support import KafkaProbe, command

SERVER, PRODUCER, CONSUMER = 2, 4, 5  # the OTLP SpanKind numbers

PRODUCER_TRACE, PRODUCER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
CLIENT_TRACE, CLIENT_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "customer-groups-under-test")
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        yield receiver


def header(record: Record, name: str) -> str:
    value: bytes = dict(record.headers)[name]
    return value.decode()


def parent_of(traceparent: str) -> tuple[str, str]:
    """The trace id and span id a W3C traceparent names."""
    _, trace_id, span_id, _ = traceparent.split("-")
    return trace_id, span_id


def event_of(kafka: KafkaProbe, command_id: str) -> Record:
    [event] = [
        r
        for r in kafka.records[kafka.settings.topic_events]
        if header(r, "ce_commandid") == command_id
    ]
    return event


def check_process_span(span: ExportedSpan, settings: Settings, command_id: str) -> None:
    assert (span.name, span.kind) == (f"process {settings.topic_commands}", CONSUMER)
    attributes = span.attributes
    assert attributes["messaging.system"] == "kafka"
    assert attributes["messaging.destination.name"] == settings.topic_commands
    assert attributes["messaging.consumer.group.name"] == settings.kafka_consumer_group
    assert attributes["messaging.destination.partition.id"].isdigit()
    assert isinstance(attributes["messaging.kafka.offset"], int)
    assert attributes["customer_groups.organization_id"] == "org_a"
    assert attributes["customer_groups.command_id"] == command_id


async def test_a_command_s_trace_goes_from_its_producer_through_the_service_to_its_event(
    settings: Settings, pool: asyncpg.Pool, kafka: KafkaProbe, receiver: OtlpReceiver
) -> None:
    tracing = tracing_from_environment()
    body = command(name="Traced")
    try:
        async with running_app(settings, tracing=tracing):
            await kafka.send(
                body, headers={"traceparent": f"00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01"}
            )
            result = await kafka.result(body["command_id"])
            assert result["status"] == "accepted"
            await kafka.wait_events(1)
    finally:
        tracing.shutdown()

    event = event_of(kafka, body["command_id"])
    trace_id, send_id = parent_of(header(event, "traceparent"))
    assert trace_id == PRODUCER_TRACE
    send = receiver.by_id(send_id)
    assert (send.name, send.kind) == (f"send {settings.topic_events}", PRODUCER)
    assert send.attributes["messaging.message.id"] == header(event, "ce_id")
    assert send.attributes["customer_groups.group_id"] == result["group"]["id"]
    # The event's parent is the service's span, which the outbox stored, not the producer's.
    process = receiver.by_id(send.parent_span_id)
    check_process_span(process, settings, body["command_id"])
    assert (process.trace_id, process.parent_span_id) == (PRODUCER_TRACE, PRODUCER_SPAN)
    assert process.service_name == "customer-groups-under-test"
    [result_record] = [
        r
        for r in kafka.records[settings.topic_results]
        if json.loads(r.value)["command_id"] == body["command_id"]
    ]
    assert parent_of(header(result_record, "traceparent")) == (PRODUCER_TRACE, process.span_id)

    # One batch span links the commands it applied; the database work runs under it.
    [batch] = [
        s for s in receiver.named(process.name) if (PRODUCER_TRACE, process.span_id) in s.links
    ]
    assert batch.attributes["messaging.batch.message_count"] >= 1
    assert process.links == [(batch.trace_id, batch.span_id)]
    [transaction] = [
        s for s in receiver.named("apply commands") if s.parent_span_id == batch.span_id
    ]
    assert transaction.attributes["db.system.name"] == "postgresql"
    under_it = {s.name for s in receiver.spans if s.parent_span_id == transaction.span_id}
    assert under_it == {"load commands", "write commands"}


async def test_an_http_write_s_trace_continues_into_its_command_and_its_event(
    settings: Settings, pool: asyncpg.Pool, kafka: KafkaProbe, receiver: OtlpReceiver
) -> None:
    tracing = tracing_from_environment()
    try:
        async with running_app(settings, tracing=tracing) as client:
            response = await client.post(
                GROUPS,
                json={"name": "Traced over HTTP"},
                headers={**ORG_A, "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
            )
            assert response.status_code == 201, response.text
            await kafka.wait_events(1)
    finally:
        tracing.shutdown()

    [server] = [s for s in receiver.spans if s.kind == SERVER]
    assert (server.trace_id, server.parent_span_id) == (CLIENT_TRACE, CLIENT_SPAN)
    assert server.attributes["http.route"] == GROUPS
    [sent] = receiver.named(f"send {settings.topic_commands}")
    assert (sent.kind, sent.parent_span_id) == (PRODUCER, server.span_id)
    [process] = [
        s for s in receiver.named(f"process {settings.topic_commands}") if s.parent_span_id
    ]
    assert (process.trace_id, process.parent_span_id) == (CLIENT_TRACE, sent.span_id)
    check_process_span(process, settings, sent.attributes["customer_groups.command_id"])
    [event] = kafka.records[settings.topic_events]
    trace_id, send_id = parent_of(header(event, "traceparent"))
    assert trace_id == CLIENT_TRACE
    assert receiver.by_id(send_id).parent_span_id == process.span_id


async def test_health_probes_and_scrapes_make_no_spans(
    settings: Settings, pool: asyncpg.Pool, receiver: OtlpReceiver
) -> None:
    tracing = tracing_from_environment()
    try:
        async with running_app(settings, tracing=tracing) as client:
            for path in ("/health/live", "/health/ready", "/metrics"):
                assert (await client.get(path)).status_code == 200
            assert (await client.get(f"{GROUPS}/grp_none", headers=ORG_A)).status_code == 404
    finally:
        tracing.shutdown()

    assert [s.attributes.get("http.route") for s in receiver.spans if s.kind == SERVER] == [
        f"{GROUPS}/{{group_id}}"
    ]
