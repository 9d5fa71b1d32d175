"""A real OTLP/HTTP trace receiver for the tests: it decodes what exporters send (protobuf,
opentelemetry-proto) and keeps the spans; and an in-process exporter that does the same."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from service.adapters.otlp import Encoder
from service.tracing import SCOPE, Sampling, Tracing, tracing_with


@dataclass(frozen=True)
class ExportedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    service_name: str
    status_code: int


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def decode(body: bytes) -> list[ExportedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ExportedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=span.kind,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        service_name=str(resource.get("service.name", "")),
                        status_code=span.status.code,
                    )
                )
    return spans


class OtlpReceiver:
    """Listens on 127.0.0.1 (a free port) for POST /v1/traces."""

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path == "/v1/traces"
                if ok:
                    spans = decode(body)
                    with receiver._lock:
                        receiver.spans.extend(spans)
                        receiver.requests += 1
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def named(self, name: str) -> list[ExportedSpan]:
        with self._lock:
            return [s for s in self.spans if s.name == name]

    def by_id(self, span_id: str) -> ExportedSpan:
        with self._lock:
            [span] = [s for s in self.spans if s.span_id == span_id]
        return span


class CapturingExporter(SpanExporter):
    """Encodes what it is given as the service's exporter does, and keeps it decoded."""

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        self._encoder = Encoder(Resource.create({"service.name": "test"}), SCOPE)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(decode(encode_spans(spans).SerializePartialToString()))
        return SpanExportResult.SUCCESS

    def hot(self, encoded: list[bytes]) -> None:
        self.spans.extend(decode(self._encoder.request(encoded)))


def capturing_tracing(sampler: str = "always_on") -> tuple[Tracing, CapturingExporter]:
    """Tracing on, each span exported as it ends."""
    exporter = CapturingExporter()
    resource = Resource.create({"service.name": "test"})
    tracing = tracing_with(
        exporter, resource, Sampling(sampler), exporter.hot, processor=SimpleSpanProcessor
    )
    return tracing, exporter
