"""The Kafka contract as FastStream's AsyncAPI document describes it.

The command subscriber reads raw bytes (it validates them itself), so its generated schema
says nothing useful; the documented publishers below carry the real payload schemas."""

from __future__ import annotations

import json
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI, Specification
from pydantic import BaseModel, Field

from service.config import Settings
from service.domain.commands import Command


class GroupSchema(BaseModel):
    """A customer group as every message and the HTTP API show it."""

    id: str = Field(examples=["grp_01JD3K5Q9Z8XAB3C4D5E6F7G8H"])
    organization_id: str = Field(examples=["org_42"])
    name: str = Field(examples=["VIP Customers"])
    description: str | None = Field(examples=["High-value customers with premium benefits"])
    platform_id: str | None = Field(examples=["12345678"])
    customer_count: int = Field(
        ge=0,
        examples=[2],
        description="The group's members now; a deleted group keeps the count it had.",
    )
    version: int = Field(ge=1, description="Starts at 1 and grows by 1 with every change.")
    created_at: str = Field(examples=["2026-11-22T10:30:00.123456Z"])
    updated_at: str = Field(examples=["2026-11-22T10:30:00.123456Z"])
    deleted_at: str | None = Field(examples=[None])


class CustomersChanged(BaseModel):
    """What a membership command did with the ids it named, each counted once."""

    changed: int = Field(ge=0, description="Ids added (or removed) by this command.")
    unchanged: int = Field(
        ge=0, description="Ids already members (add) or not members (remove): skipped."
    )


class CommandResultSchema(BaseModel):
    """The answer to one command; a replayed command_id gets the stored answer again."""

    command_id: str
    status: str = Field(description="accepted or rejected")
    code: int = Field(description="201, 200, 404, 409 or 422")
    error: str | None = Field(examples=["Group with same name already exists"])
    details: Any = Field(examples=[{"name": "VIP Customers"}])
    group: GroupSchema | None
    customers: CustomersChanged | None = Field(
        default=None,
        description="group.customers.add and group.customers.remove only (absent otherwise).",
    )


class GroupEventSchema(GroupSchema):
    """CloudEvents 1.0 binary mode: the ce_* attributes are Kafka headers."""

    previous: dict[str, Any] | None = Field(
        default=None, description="group.updated only: the old value of each changed field."
    )
    customer_ids: list[str] | None = Field(
        default=None,
        examples=[["cus_1", "cus_2"]],
        description=(
            "group.customers_added and group.customers_removed only: exactly the ids that"
            " changed, in the order the command gave them."
        ),
    )


def document_topics(broker: KafkaBroker, settings: Settings) -> None:
    """Declare what the service (and any producer) writes, for the AsyncAPI document only."""
    broker.publisher(
        settings.topic_commands,
        title=f"{settings.topic_commands}:Command",
        description=(
            "What producers (the HTTP API included) send: group.create, group.update, "
            "group.delete, group.customers.add and group.customers.remove. Key: "
            "organization_id. Headers honoured: reply_to, correlation_id, traceparent."
        ),
        schema=Command,
    )
    broker.publisher(
        settings.topic_results,
        title=f"{settings.topic_results}:Result",
        description=(
            "One result per command (and per redelivery). Key: organization_id. Header "
            "correlation_id: the command's, echoed; traceparent: the command's span (with "
            "tracing off, the command's own). A copy goes to the command's reply_to "
            "topic too, unless that names one of the service's own topics."
        ),
        schema=CommandResultSchema,
    )
    broker.publisher(
        settings.topic_events,
        title=f"{settings.topic_events}:Event",
        description=(
            "Change events, published from the outbox after commit, at least once. Key: "
            "group id. Headers: ce_specversion, ce_id (the same on every re-publish), ce_type "
            "(group.created, group.updated, group.deleted, group.customers_added, "
            "group.customers_removed), ce_source, ce_subject, ce_time, "
            "content-type, ce_organizationid, ce_groupversion, ce_commandid, ce_dataschema "
            "(the URI of the value's JSON Schema, when CE_DATASCHEMA_BASE is set, as by "
            "default), and traceparent: "
            "the relay's send span, in the command's trace (with tracing off, the command's "
            "own traceparent when it had one)."
        ),
        schema=GroupEventSchema,
    )
    broker.publisher(
        settings.topic_state,
        title=f"{settings.topic_state}:State",
        description=(
            "Compacted: the latest group per key (group id), with its customer_count but "
            "never the ids; a delete is a tombstone."
        ),
        schema=GroupSchema | None,
    )
    broker.publisher(
        settings.topic_dlq,
        title=f"{settings.topic_dlq}:DeadLetter",
        description=(
            "Commands that could not be read: the original key, bytes and headers, plus "
            "dlq_reason, dlq_error, dlq_source_topic, dlq_source_partition, "
            "dlq_source_offset and dlq_source_timestamp. A record over 1,000,000 bytes keeps "
            "only its first bytes, with dlq_truncated and dlq_original_size instead of its "
            "own headers; dlq_source_* point at the original."
        ),
        schema=bytes,
    )


def specification(settings: Settings, version: str) -> Specification:
    """The document of the contract for these settings' topics; a broker of its own, never
    started, declares them: the running broker's command subscriber reads raw bytes."""
    broker = KafkaBroker(settings.kafka_bootstrap_servers)
    document_topics(broker, settings)
    return AsyncAPI(
        broker,
        title="customer-groups",
        version=version,
        description="Customer groups per organization: commands in, results and events out.",
    ).to_specification()


def document(settings: Settings, version: str) -> str:
    """The AsyncAPI document as committed in docs/asyncapi.json: stable key order."""
    data = json.loads(specification(settings, version).to_json())
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
