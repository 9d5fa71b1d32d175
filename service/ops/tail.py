"""Following what the service writes: events, results, dead letters or state."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import orjson

from service.adapters.kafka import Record
from service.config import Settings
from service.ops.common import headers_of, iso, partitions_of, reader, record_time, text_of

KINDS = ("events", "results", "dlq", "state")


def topic_of(settings: Settings, kind: str) -> str:
    topics = {
        "events": settings.topic_events,
        "results": settings.topic_results,
        "dlq": settings.topic_dlq,
        "state": settings.topic_state,
    }
    return topics[kind]


def _value(record: Record) -> Any:
    if record.value is None:
        return None
    try:
        return orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return text_of(record.value)


def organization_of(kind: str, record: Record) -> str | None:
    """Events carry it in a header, results and dead letters in the key, state in the value."""
    if kind == "events":
        return headers_of(record).get("ce_organizationid")
    if kind == "state":
        value = _value(record)
        return value.get("organization_id") if isinstance(value, dict) else None
    return text_of(record.key)


def as_json(record: Record) -> dict[str, Any]:
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "time": iso(record_time(record)),
        "key": text_of(record.key),
        "headers": headers_of(record),
        "value": _value(record),
    }


def render(kind: str, record: Record) -> str:
    """One line an operator can read at a glance."""
    at = iso(record_time(record))
    headers = headers_of(record)
    value = _value(record)
    body = value if isinstance(value, dict) else {}
    if kind == "events":
        return (
            f"{at} {headers.get('ce_type', '?'):<13} {headers.get('ce_subject')}"
            f" v{headers.get('ce_groupversion')} org={headers.get('ce_organizationid')}"
            f" name={body.get('name')!r}{_members_changed(headers, body)}"
            f" ce_id={headers.get('ce_id')}"
        )
    if kind == "results":
        line = f"{at} {body.get('command_id')} {body.get('status')} {body.get('code')}"
        if body.get("error"):
            line += f" {body['error']}: {orjson.dumps(body.get('details')).decode()}"
        group = body.get("group")
        if isinstance(group, dict):
            line += f" group={group.get('id')} v{group.get('version')}"
        customers = body.get("customers")
        if isinstance(customers, dict):
            line += (
                f" customers: {customers.get('changed')} changed,"
                f" {customers.get('unchanged')} unchanged"
            )
        return line
    if kind == "dlq":
        source = ":".join(
            headers.get(f"dlq_source_{part}", "?") for part in ("topic", "partition", "offset")
        )
        return (
            f"{at} {headers.get('dlq_reason')}: {headers.get('dlq_error')} (from {source})"
            f" key={text_of(record.key)} value={text_of(record.value, 120)}"
        )
    if value is None:
        return f"{at} {text_of(record.key)} tombstone"
    return (
        f"{at} {text_of(record.key)} v{body.get('version')} name={body.get('name')!r}"
        f" org={body.get('organization_id')} customers={body.get('customer_count')}"
    )


_IDS_SHOWN = 3


def _members_changed(headers: dict[str, str], body: dict[str, Any]) -> str:
    """For a membership event: which customers, and the count after the change."""
    ids = body.get("customer_ids")
    if not isinstance(ids, list):
        return ""
    sign = "-" if headers.get("ce_type") == "group.customers_removed" else "+"
    shown = ", ".join(str(customer_id) for customer_id in ids[:_IDS_SHOWN])
    more = ", …" if len(ids) > _IDS_SHOWN else ""
    return f" customers {sign}{len(ids)} [{shown}{more}] count={body.get('customer_count')}"


async def tail(
    settings: Settings,
    kind: str,
    emit: Callable[[Record], None],
    *,
    from_beginning: bool = False,
    limit: int | None = None,
    idle_timeout: float | None = None,
    organization: str | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Pass each new record (or every one, from the beginning) to `emit`, until `limit`
    records, `idle_timeout` seconds without one, or `stop`; returns how many were emitted."""
    loop = asyncio.get_running_loop()
    emitted = 0
    async with reader(settings) as consumer:
        tps = await partitions_of(settings, topic_of(settings, kind))
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        last_seen = loop.time()
        while (limit is None or emitted < limit) and not (stop and stop.is_set()):
            batches = await consumer.getmany(timeout_ms=200)
            if batches:
                last_seen = loop.time()
            elif idle_timeout is not None and loop.time() - last_seen >= idle_timeout:
                break
            records = sorted(itertools.chain(*batches.values()), key=lambda r: r.timestamp)
            for record in records:
                if organization and organization_of(kind, record) != organization:
                    continue
                emit(record)
                emitted += 1
                if limit is not None and emitted >= limit:
                    break
    return emitted
