"""The FastStream subscriber of the commands topic: it only hands each batch of records to
the command pipeline, which commits their offsets."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaMessage as RawKafkaMessage

from service.adapters.kafka import Record
from service.adapters.kafka.consumer_start import StartWithinRetention
from service.config import Settings
from service.pipeline import Pipeline


async def _parse_batch(
    records: tuple[Record, ...],
    original: Callable[[tuple[Record, ...]], Awaitable[RawKafkaMessage]],
) -> RawKafkaMessage:
    """FastStream decodes every header as UTF-8 and fails the whole batch, again on each
    redelivery, when one is null or not UTF-8. It is shown only the first and last records
    (all it reads besides bodies and headers), without headers; the handler reads the
    untouched records, whose headers it decodes leniently."""
    ends = (records[0], records[-1])
    message = await original(tuple(dataclasses.replace(r, headers=[]) for r in ends))
    message.raw_message = records
    return message


async def _records(message: RawKafkaMessage) -> tuple[Record, ...]:
    """Skip FastStream's decoding: the handler reads the records themselves, bad ones
    included, and needs their offsets and headers too."""
    records: tuple[Record, ...] = message.raw_message
    return records


_FETCH_MIN_BYTES = 64 * 1024


def subscribe(broker: KafkaBroker, settings: Settings, pipeline: Pipeline) -> Any:
    """Register the batch subscriber; the pipeline commits its offsets."""

    start = StartWithinRetention(settings, lambda: subscriber.consumer)
    subscriber = broker.subscriber(
        settings.topic_commands,
        batch=True,
        group_id=settings.kafka_consumer_group,
        # For a committed offset out of range (its records deleted unread, or the topic
        # recreated); with none committed, `start` chooses where to begin.
        auto_offset_reset="earliest",
        listener=start,
        max_records=settings.command_batch_max,
        batch_timeout_ms=settings.command_batch_timeout_ms,
        # The broker holds a fetch until 64 KiB wait or this long has passed, so moderate
        # rates make fewer, fuller fetches and batches, which cost less CPU and no latency
        # (docs/benchmark.md).
        fetch_min_bytes=_FETCH_MIN_BYTES,
        fetch_max_wait_ms=settings.command_fetch_wait_ms,
        # At-least-once: the pipeline commits a batch's offsets only after its results
        # were acknowledged (the default ACK_FIRST would commit before processing).
        ack_policy=AckPolicy.MANUAL,
        parser=_parse_batch,
        decoder=_records,
        no_reply=True,
        title="customer-groups.commands",
        description=(
            "Commands from producers: group.create, group.update, group.delete. Keyed by "
            "organization_id. See the CreateGroup, UpdateGroup and DeleteGroup schemas."
        ),
    )

    # The records come as the body, typed Any so that nothing validates them: asking for
    # the message instead (a Context parameter) costs a trip to a worker thread per batch.
    @subscriber
    async def on_commands(records: Any) -> None:
        kafka_consumer = subscriber.consumer
        assert kafka_consumer is not None  # it is running: it handed over this batch
        await pipeline.feed(records, kafka_consumer.commit)

    return subscriber
