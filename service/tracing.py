"""Traces with OpenTelemetry, configured only by the standard OTEL_* environment variables.

On when an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or its traces-only form) and
`OTEL_SDK_DISABLED` is not true. The SDK reads the rest: `OTEL_SERVICE_NAME` and
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`, the exporter's headers, TLS, timeout and
compression; `OTEL_TRACES_SAMPLER(_ARG)` is read here, for both kinds of span below. Off, no
span is made: the producer's traceparent passes through onto results and events, and
per-command code is skipped altogether.

The spans along a command's path are in service/spans.py. The per-command and per-event ones
are `HotSpan`s (adapters.otlp), which cost a small part of what the SDK's span objects do,
exported through a queue of their own (adapters.span_queue, also sized by OTEL_BSP_*);
everything else is the SDK's."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind, Tracer

from service.adapters.otlp import Exporter, HotSpan, SpanShape, encode_spans
from service.adapters.span_queue import Batching, SpanQueue

DEFAULT_SERVICE_NAME = "customer-groups"
SCOPE = "customer-groups"
SUPPORTED_PROTOCOL = "http/protobuf"
DEFAULT_SAMPLER = "parentbased_always_on"


# A traceparent's flags, its last two hex digits, with the sampled bit (1) set: those whose
# last digit is odd.
_SAMPLED_FLAGS = "13579bdf"


class Sampling:
    """The specification's built-in samplers, `OTEL_TRACES_SAMPLER(_ARG)`: an SDK sampler for
    the SDK's spans, and the same decision for hot spans without the SDK's objects."""

    def __init__(self, name: str = DEFAULT_SAMPLER, ratio: float = 1.0) -> None:
        self.parent_based = name.startswith("parentbased_")
        root = name.removeprefix("parentbased_")
        if root not in ("always_on", "always_off", "traceidratio"):
            # As the SDK does with a sampler it does not know.
            self.parent_based, root = True, "always_on"
        self.ratio = {"always_on": 1.0, "always_off": 0.0}.get(root, min(max(ratio, 0.0), 1.0))
        self._bound = round(self.ratio * (1 << 64))
        sdk: Sampler = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF}.get(
            root
        ) or TraceIdRatioBased(self.ratio)
        self.sdk = ParentBased(sdk) if self.parent_based else sdk

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Sampling:
        name = environ.get("OTEL_TRACES_SAMPLER", DEFAULT_SAMPLER).strip().lower()
        try:
            ratio = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        except ValueError:
            ratio = 1.0
        return cls(name or DEFAULT_SAMPLER, ratio)

    def sampled(self, parent: str | None, trace_id: bytes) -> bool:
        """`parent`: a W3C traceparent already checked (domain.headers), or None;
        `trace_id`: its 16 bytes; the ratio looks at the lower 8, as the SDK does."""
        if parent and self.parent_based:
            return parent[54] in _SAMPLED_FLAGS
        return self.ratio == 1.0 or int.from_bytes(trace_id[8:], "big") < self._bound


def format_traceparent(trace_id: str, span_id: str, *, sampled: bool) -> str:
    """From the ids' hex text."""
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


class HotTracer:
    """Starts hot spans, and ends them a batch at a time: encoded, to `sink`."""

    def __init__(self, sampling: Sampling, sink: Callable[[list[bytes]], None]) -> None:
        self._sampling = sampling
        self._sink = sink

    def start(
        self, shape: SpanShape, parent: str | None, values: tuple[str | int | None, ...]
    ) -> tuple[HotSpan | None, str]:
        """The span (None when not sampled) and the traceparent its children get. `parent`
        is a W3C traceparent already checked (domain.headers)."""
        # Ids as the bytes the encoder writes; the traceparent's hex text is made from them.
        span_id = (random.getrandbits(64) or 1).to_bytes(8, "big")
        if parent:
            trace = parent[3:35]
            trace_id, parent_id = bytes.fromhex(trace), bytes.fromhex(parent[36:52])
        else:
            trace_id, parent_id = (random.getrandbits(128) or 1).to_bytes(16, "big"), b""
            trace = trace_id.hex()
        sampled = self._sampling.sampled(parent, trace_id)
        traceparent = format_traceparent(trace, span_id.hex(), sampled=sampled)
        if not sampled:
            return None, traceparent
        return (shape, trace_id, span_id, parent_id, time.time_ns(), values), traceparent

    def end(self, spans: Iterable[HotSpan], link: bytes = b"", error: str | None = None) -> None:
        """`link`: link_to()s every span gets; `error`: the error.type of every span."""
        if encoded := encode_spans(spans, time.time_ns(), link, error):
            self._sink(encoded)


class Tracing:
    """The service's tracers, or none at all (`enabled` is False). `hot`: where ended hot
    spans go, encoded (a SpanQueue's put)."""

    def __init__(
        self,
        provider: TracerProvider | None = None,
        hot: Callable[[list[bytes]], None] | None = None,
        sampling: Sampling | None = None,
        on_shutdown: Callable[[], None] | None = None,
        lost_spans: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self._provider = provider
        self.lost_spans = lost_spans  # spans not exported, by reason
        self.enabled = provider is not None and hot is not None
        self.tracer: Tracer = (
            provider.get_tracer(SCOPE) if provider is not None else trace.NoOpTracer()
        )
        self.hot = HotTracer(sampling or Sampling(), hot or (lambda _: None))
        self.max_links = SpanLimits().max_links or 0
        self._shapes: dict[tuple[str, tuple[str, ...], tuple[tuple[str, Any], ...]], SpanShape] = {}
        self._on_shutdown = on_shutdown

    @property
    def provider(self) -> TracerProvider | None:
        return self._provider

    def shape(
        self, name: str, kind: SpanKind, constant: dict[str, Any], variable: tuple[str, ...]
    ) -> SpanShape:
        key = (name, variable, tuple(constant.items()))
        if (shape := self._shapes.get(key)) is None:
            shape = self._shapes[key] = SpanShape(name, kind, constant, variable)
        return shape

    def shutdown(self) -> None:
        """Export what is still queued (bounded by OTEL_BSP_EXPORT_TIMEOUT), then stop."""
        if self._on_shutdown is not None:
            self._on_shutdown()
            self._on_shutdown = None
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None


def tracing_with(
    exporter: SpanExporter,
    resource: Resource,
    sampling: Sampling,
    hot: Callable[[list[bytes]], None],
    *,
    processor: Callable[[SpanExporter], SpanProcessor] = BatchSpanProcessor,
    queue: SpanQueue | None = None,
) -> Tracing:
    """Tracing that hands the SDK's spans to `exporter` through `processor`, and the hot
    spans, encoded, to `hot` (`queue`: the one `hot` puts them in)."""
    provider = TracerProvider(resource=resource, sampler=sampling.sdk)
    provider.add_span_processor(processor(exporter))
    if queue is None:
        return Tracing(provider, hot, sampling)
    return Tracing(provider, hot, sampling, queue.shutdown, queue.lost)


def service_resource() -> Resource:
    """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, with this service's name by default."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def tracing_from_environment(environ: Mapping[str, str] = os.environ) -> Tracing:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Tracing()
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint or environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return Tracing()
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", SUPPORTED_PROTOCOL
    )
    if protocol.strip() != SUPPORTED_PROTOCOL:
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: traces are exported"
            f" as OTLP {SUPPORTED_PROTOCOL}"
        )
    resource = service_resource()
    queue = SpanQueue(Exporter(resource, SCOPE).send, Batching.from_environment(environ))
    return tracing_with(
        OTLPSpanExporter(),
        resource,
        Sampling.from_environment(environ),
        queue.put,
        queue=queue,
    )
