"""Hot spans on their way out: encoded by the thread that ends them (adapters.otlp), queued
here, and sent by a thread of their own in requests of up to OTEL_BSP_MAX_EXPORT_BATCH_SIZE
spans, at least every OTEL_BSP_SCHEDULE_DELAY; what does not fit in OTEL_BSP_MAX_QUEUE_SIZE
is dropped and counted.

Why not the SDK's batch span processor: it takes one span object at a time, under a lock,
and its export thread encodes the whole batch while holding the GIL, so the event loop that
made the spans waits for it (docs/benchmark.md). Here a batch of commands hands its encoded
spans over in one call, and the thread only joins bytes and waits on the network."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

log = logging.getLogger(__name__)

# Used when OTEL_BSP_MAX_QUEUE_SIZE / OTEL_BSP_MAX_EXPORT_BATCH_SIZE are unset: a command
# makes two spans, so the SDK's defaults (2,048 / 512) dropped spans at the consumer's rate
# and sent four times as many requests (docs/benchmark.md).
DEFAULT_QUEUE_SIZE = 16_384
DEFAULT_EXPORT_BATCH_SIZE = 2_048


def _positive(environ: Mapping[str, str], name: str, default: int) -> int:
    try:
        value = int(environ.get(name, default))
    except ValueError:
        log.warning("%s is not an integer; using %d", name, default)
        return default
    return value if value > 0 else default


class Batching(NamedTuple):
    """OTEL_BSP_*, with the specification's defaults for the delay and the timeout."""

    schedule_delay_s: float = 5.0
    export_timeout_s: float = 30.0
    max_queue_size: int = DEFAULT_QUEUE_SIZE
    max_export_batch_size: int = DEFAULT_EXPORT_BATCH_SIZE

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Batching:
        sized = {"OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"} & set(environ)
        # Either size set puts both to the specification's defaults, as the SDK does.
        queue, batch = (2_048, 512) if sized else (DEFAULT_QUEUE_SIZE, DEFAULT_EXPORT_BATCH_SIZE)
        queue = _positive(environ, "OTEL_BSP_MAX_QUEUE_SIZE", queue)
        return cls(
            schedule_delay_s=_positive(environ, "OTEL_BSP_SCHEDULE_DELAY", 5_000) / 1000,
            export_timeout_s=_positive(environ, "OTEL_BSP_EXPORT_TIMEOUT", 30_000) / 1000,
            max_queue_size=queue,
            max_export_batch_size=min(
                _positive(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", batch), queue
            ),
        )


class SpanQueue:
    """Encoded spans waiting for `send` (False: the collector refused them, or could not be
    reached within the exporter's retries; they are gone, as with the SDK)."""

    def __init__(self, send: Callable[[Sequence[bytes]], bool], batching: Batching) -> None:
        self._send = send
        self._batching = batching
        self._queue: deque[bytes] = deque()
        self._ready = threading.Condition()
        self._stopping = False
        self.dropped = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="OtelHotSpans", daemon=True)
        self._thread.start()

    def put(self, spans: list[bytes]) -> None:
        with self._ready:
            room = self._batching.max_queue_size - len(self._queue)
            if len(spans) > room:
                if not self.dropped:
                    log.warning("span export queue full: dropping spans")
                self.dropped += len(spans) - max(room, 0)
                spans = spans[: max(room, 0)]
            self._queue.extend(spans)
            if len(self._queue) >= self._batching.max_export_batch_size:
                self._ready.notify()

    def _take(self) -> list[bytes] | None:
        """The next batch, once full or due; None when stopped and empty."""
        with self._ready:
            if not self._stopping and len(self._queue) < self._batching.max_export_batch_size:
                self._ready.wait(self._batching.schedule_delay_s)
            if not self._queue:
                return None if self._stopping else []
            count = min(len(self._queue), self._batching.max_export_batch_size)
            return [self._queue.popleft() for _ in range(count)]

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            if not batch:
                continue
            try:
                sent = self._send(batch)
            except Exception:
                log.exception("exporting spans failed")
                sent = False
            if not sent:
                self.failed += len(batch)

    def lost(self) -> dict[str, int]:
        return {"queue_full": self.dropped, "not_exported": self.failed}

    def shutdown(self) -> None:
        """Send what is queued, for at most OTEL_BSP_EXPORT_TIMEOUT, then stop."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
        self._thread.join(self._batching.export_timeout_s)
