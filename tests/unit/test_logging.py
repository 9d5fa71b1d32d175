"""Log lines: one JSON object each with LOG_JSON, escaped text otherwise; no value from the
wire can forge a field, split a line or drive a terminal."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest
from opentelemetry.sdk.trace import TracerProvider

from service.adapters.kafka.reply_copies import log as copies_log
from service.observability import Metrics, command_ids, configure_logging

HOSTILE = 'x","level":"CRITICAL","forged":"1\n{"level":"CRITICAL"}\x1b[2J\u202e'


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_cannot_be_forged_and_keep_their_traceback(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", as_json=True)
    copies_log.warning("no copies to reply_to %r: %s", HOSTILE, HOSTILE)
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        copies_log.exception("failed for %s", HOSTILE, extra={"organization_id": "org_a"})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert (first["level"], second["level"]) == ("WARNING", "ERROR")
    assert "forged" not in first and "forged" not in second
    assert HOSTILE in first["message"]
    assert "ValueError" in second["traceback"]
    assert second["organization_id"] == "org_a"
    assert datetime.fromisoformat(first["time"]).utcoffset() is not None
    assert datetime.fromisoformat(first["time"]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert all("\x1b" not in line for line in lines)


def test_a_json_line_made_inside_a_span_names_its_trace_and_span(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", as_json=True)
    tracer = TracerProvider().get_tracer("test")
    copies_log.warning("outside")
    with tracer.start_as_current_span("work") as span:
        copies_log.warning("inside", extra=command_ids("org_a", "cmd-1", "grp_1"))
    outside, inside = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert "trace_id" not in outside and "span_id" not in outside
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert (inside["organization_id"], inside["command_id"], inside["group_id"]) == (
        "org_a",
        "cmd-1",
        "grp_1",
    )


def test_text_lines_escape_what_could_split_them_or_drive_a_terminal(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", as_json=False)
    copies_log.warning("topic %s", HOSTILE)
    [line] = capsys.readouterr().err.splitlines()
    assert "\\n" in line
    assert "\\x1b" in line
    assert "\\u202e" in line
    assert "\x1b" not in line


def test_process_and_gc_metrics_are_exported() -> None:
    registry = Metrics().registry
    assert registry.get_sample_value("process_resident_memory_bytes") is not None
    assert registry.get_sample_value("process_open_fds") is not None
    samples = {s.name for m in registry.collect() for s in m.samples}
    assert "python_gc_collections_total" in samples
