"""The running service's JSON logs under hostile input: every line one JSON object, no field
forged, and the ids of what a line is about."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import asyncpg

from service.config import Settings
from tests.otlp_receiver import OtlpReceiver
from tests.support import KafkaProbe, command

# Quotes that would close a JSON string, a newline that would start a forged line, a terminal
# escape, a right-to-left override.
HOSTILE = 'x","level":"CRITICAL","forged":"1\n{"level":"CRITICAL","forged":"2"}\x1b[2J\u202e'


def start_consumer(environment: dict[str, str], out: BinaryIO) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.entrypoints.cli", "run", "--role", "consumer"],
        env=environment,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


async def test_hostile_headers_names_and_keys_cannot_forge_or_split_a_json_log_line(
    settings: Settings, pool: asyncpg.Pool, kafka: KafkaProbe, tmp_path: Path
) -> None:
    log = tmp_path / "service.log"
    with OtlpReceiver() as receiver, log.open("wb") as out:
        environment = {
            **os.environ,
            **settings.environment(),
            "LOG_JSON": "true",
            "LOG_LEVEL": "INFO",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        service = start_consumer(environment, out)
        try:
            hostile_name = command(organization_id="org_logs", name=HOSTILE)
            hostile_headers = command(organization_id="org_logs")
            misrouted = command(organization_id="org_logs")
            wire = {"reply_to": HOSTILE, "correlation_id": HOSTILE, "traceparent": HOSTILE}
            await kafka.send(hostile_name, key=HOSTILE.encode())
            await kafka.send(hostile_headers, headers=wire)
            await kafka.send(HOSTILE.encode(), key=HOSTILE.encode(), headers=wire)
            await kafka.send(misrouted, key=HOSTILE.encode())
            for body in (hostile_name, hostile_headers, misrouted):
                await kafka.result(body["command_id"], timeout=60)
        finally:
            service.send_signal(signal.SIGTERM)
            # uvicorn, once shut down, lets the signal end the process as it would have.
            assert service.wait(timeout=30) in {0, -signal.SIGTERM}

    lines = log.read_text().splitlines()
    assert len(lines) >= 2
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(r, dict) for r in records)
    assert not [r for r in records if "forged" in r]
    assert {r["level"] for r in records} <= {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
    for record in records:
        assert datetime.fromisoformat(record["time"]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    [warning] = [r for r in records if "keyed other than by their organization_id" in r["message"]]
    assert (warning["level"], warning["organization_id"]) == ("WARNING", "org_logs")
    assert any("customer-groups ready" in r["message"] for r in records)
    assert all("\x1b" not in line for line in lines)
    assert not [r for r in records if "color_message" in r]
