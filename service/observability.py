"""Metrics, health and the classification of failures worth retrying."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opentelemetry import trace
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from service.domain.headers import Refused
from service.domain.results import CommandResult
from service.escaping import printable

if TYPE_CHECKING:
    from service.adapters.postgres.outbox_store import Backlog


class Metrics:
    def __init__(self, lost_spans: Callable[[], Mapping[str, int]] = dict) -> None:
        """`lost_spans`: the tracing's count of spans not exported, by reason."""
        self.registry = CollectorRegistry()
        r = self.registry
        # Resident memory, CPU seconds, open file descriptors; collections per generation.
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(_LostSpans(lost_spans))
        self.http_requests = Counter(
            "customer_groups_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "customer_groups_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.commands = Counter(
            "customer_groups_commands", "Commands handled", ["type", "outcome", "code"], registry=r
        )
        self._commands_by_label: dict[tuple[str, str, int], Counter] = {}
        self.batch_seconds = Histogram(
            "customer_groups_command_batch_seconds",
            "Time to apply a batch of commands and publish its results",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.dead_letters = Counter(
            "customer_groups_dead_letters", "Commands sent to the dead-letter topic", registry=r
        )
        self.transient_errors = Counter(
            "customer_groups_transient_errors", "Failures retried with backoff", registry=r
        )
        self.events_published = Counter(
            "customer_groups_events_published", "Events published by the outbox relay", registry=r
        )
        self.outbox_backlog = Gauge(
            "customer_groups_outbox_backlog", "Outbox rows not yet published", registry=r
        )
        self.outbox_oldest_age = Gauge(
            "customer_groups_outbox_oldest_age_seconds",
            "Age of the oldest unpublished outbox row",
            registry=r,
        )
        self.headers_refused = Counter(
            "customer_groups_headers_refused",
            "Command headers left out because they break their rule (the command is handled"
            " as if they were absent)",
            ["header", "reason"],
            registry=r,
        )
        self.misrouted_commands = Counter(
            "customer_groups_misrouted_commands",
            "Commands whose Kafka key is not their organization_id",
            registry=r,
        )
        self.replies_dropped = Counter(
            "customer_groups_reply_copies_dropped",
            "Copies of results to a producer's reply_to topic that were not sent",
            ["reason"],
            registry=r,
        )
        self.results_not_sendable = Counter(
            "customer_groups_results_not_sendable",
            "Results or dead letters Kafka refused, replaced by a small stand-in",
            ["kind"],
            registry=r,
        )
        self.outbox_parked = Gauge(
            "customer_groups_outbox_parked",
            "Outbox rows set aside: refused by Kafka for good, or waiting behind such a row",
            registry=r,
        )
        self.events_parked = Counter(
            "customer_groups_events_parked",
            "Outbox rows the relay set aside because Kafka cannot take them",
            registry=r,
        )
        self.relay_leading = Gauge(
            "customer_groups_relay_leading",
            "1 while this process's relay is the one publishing the outbox (set at scrape time)",
            registry=r,
        )
        self.pipeline_stopped = Gauge(
            "customer_groups_pipeline_stopped",
            "1 once this process's command pipeline cannot go on (it then exits)",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "customer_groups_consumer_lag",
            "Commands not yet consumed, per assigned partition (set at scrape time)",
            ["topic", "partition"],
            registry=r,
        )

    def observe_backlog(self, backlog: Backlog) -> None:
        self.outbox_backlog.set(backlog.rows)
        self.outbox_oldest_age.set(backlog.oldest_age)
        self.outbox_parked.set(backlog.parked)

    def count_refused(self, refused: Refused) -> None:
        self.headers_refused.labels(refused.header, refused.reason).inc()

    def count_command(self, command_type: str, result: CommandResult) -> None:
        # labels() validates and locks on every call, a cost per command worth avoiding;
        # the handful of label sets are kept (docs/benchmark.md).
        key = (command_type, result.status, result.code)
        if (counter := self._commands_by_label.get(key)) is None:
            counter = self.commands.labels(command_type, result.status, str(result.code))
            self._commands_by_label[key] = counter
        counter.inc()


class _LostSpans:
    def __init__(self, read: Callable[[], Mapping[str, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "customer_groups_spans_lost",
            "Spans this process made but did not export: its queue was full, or the collector"
            " refused them or could not be reached",
            labels=["reason"],
        )
        for reason, count in self._read().items():
            family.add_metric([reason], count)
        yield family


@dataclass
class Health:
    """What each component last saw; readiness is the conjunction of them."""

    problems: dict[str, str] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)

    def ok(self, component: str) -> None:
        self.problems.pop(component, None)
        self.since.pop(component, None)

    def degraded(self, component: str, reason: str) -> None:
        self.problems[component] = reason
        self.since.setdefault(component, time.monotonic())

    @property
    def healthy(self) -> bool:
        return not self.problems


class RateLimitedLog:
    """At most one warning per `every_s`, with how many were held back since the last."""

    def __init__(self, log: logging.Logger, every_s: float) -> None:
        self._log = log
        self._every_s = every_s
        self._next = 0.0
        self._held = 0

    def warning(self, message: str, *args: object, extra: dict[str, str] | None = None) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        held, self._held, self._next = self._held, 0, now + self._every_s
        self._log.warning(message + " (%d more since the last warning)", *args, held, extra=extra)


class TraceIds(logging.Filter):
    """Puts the current span's trace_id and span_id on a record made inside one."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = f"{context.trace_id:032x}"
            record.span_id = f"{context.span_id:016x}"
        return True


def command_ids(
    organization_id: str | None, command_id: str | None = None, group_id: str | None = None
) -> dict[str, str]:
    """`extra` fields of a log line about one command (checked values: no forging in JSON)."""
    known = {"organization_id": organization_id, "command_id": command_id, "group_id": group_id}
    return {k: v for k, v in known.items() if v}


class TextFormatter(logging.Formatter):
    """Human-readable lines in which a value from the wire can neither split a line nor
    drive the terminal: the message is escaped (a traceback still follows on its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


def configure_logging(level: str, as_json: bool) -> None:
    """LOG_JSON=true: one JSON object per line (ISO 8601 UTC time, level, logger, message,
    the traceback inside the object, trace_id and span_id inside a span, and any `extra`
    fields such as organization_id, command_id, group_id); values are JSON strings, so no
    field can be forged. Otherwise escaped text."""
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.addFilter(TraceIds())
        handler.setFormatter(
            JsonFormatter(
                ["levelname", "name", "message"],
                rename_fields={"levelname": "level", "name": "logger", "exc_info": "traceback"},
                # uvicorn's copy of the message with terminal colours in it.
                reserved_attrs=[*RESERVED_ATTRS, "color_message"],
                timestamp="time",
            )
        )
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # The SDK warns of every span a full export queue drops: thousands a second under load.
    logging.getLogger("opentelemetry.sdk._shared_internal").setLevel(logging.ERROR)
