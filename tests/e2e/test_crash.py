"""kill -9 the service while it works, restart it: every command has exactly one effect."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

from service.config import Settings
from tests.support import KafkaProbe, command, headers_of

ORGS = [f"org_crash_{n}" for n in range(10)]
GROUPS_PER_ORG = 4
UPDATES_PER_GROUP = 7
ROLES = ["--role", "consumer", "--role", "relay"]


def service_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.environment(), "LOG_LEVEL": "WARNING"}


def start_service(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service.entrypoints.cli", "run", *ROLES],
            env=service_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def workload() -> Iterator[dict[str, Any]]:
    """Per organization: creates, then chains of updates that each expect the version before.

    A lost command breaks its chain (every later update of that group is a 409), and a command
    applied twice leaves a version higher than planned."""
    for round_ in range(UPDATES_PER_GROUP + 1):
        for org in ORGS:
            for n in range(GROUPS_PER_ORG):
                group_id = f"grp_{org}_{n}"
                if round_ == 0:
                    yield command(organization_id=org, group_id=group_id, name=f"G{n}")
                else:
                    yield command(
                        "group.update",
                        organization_id=org,
                        group_id=group_id,
                        name=f"G{n} v{round_ + 1}",
                        expected_version=round_,
                    )


def answered(kafka: KafkaProbe) -> set[str]:
    return {r["command_id"] for r in kafka.results()}


async def test_kill_9_mid_stream_then_restart_loses_and_repeats_nothing(
    settings: Settings, pool: asyncpg.Pool, kafka: KafkaProbe, tmp_path: Path
) -> None:
    bodies = list(workload())
    ids = {b["command_id"] for b in bodies}
    log = tmp_path / "service.log"
    first = start_service(settings, log)
    try:
        warmup = command(organization_id="org_warmup", name="Warm-up")
        ids.add(warmup["command_id"])
        assert (await kafka.ask(warmup))["code"] == 201
        half = len(bodies) // 2
        await kafka.send_many(bodies[:half])
        # Kill as soon as a batch has committed in PostgreSQL: its results and its offset
        # commit are then most likely still on their way, the window a crash must survive.
        deadline = asyncio.get_running_loop().time() + 30
        while await pool.fetchval("SELECT count(*) FROM processed_commands") <= 1:
            assert asyncio.get_running_loop().time() < deadline, "nothing was committed"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        await kafka.send_many(bodies[half:])
    finally:
        if first.poll() is None:
            first.kill()
    committed = await pool.fetchval("SELECT count(*) FROM processed_commands")
    assert 1 < committed < len(ids), "the kill came before or after all the work"

    second = start_service(settings, log)
    try:
        await kafka.wait_for(settings.topic_results, lambda _: answered(kafka) >= ids, timeout=45)
        final_version = UPDATES_PER_GROUP + 1
        group_ids = {f"grp_{org}_{n}" for org in ORGS for n in range(GROUPS_PER_ORG)}

        def all_events_in(records: list[Any]) -> bool:
            seen = {(r.key, headers_of(r)["ce_groupversion"]) for r in records}
            return all((g.encode(), str(final_version)) in seen for g in group_ids)

        await kafka.wait_for(settings.topic_events, all_events_in, timeout=30)
    finally:
        second.kill()
        second.wait(timeout=10)

    by_command: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in kafka.results():
        by_command[result["command_id"]].append(result)
    assert set(by_command) == ids
    for command_id, results in by_command.items():
        assert all(r == results[0] for r in results), command_id
        assert results[0]["status"] == "accepted", results[0]

    rows = await pool.fetch("SELECT id, version, name FROM customer_groups")
    versions = {r["id"]: r["version"] for r in rows if r["id"] in group_ids}
    assert versions == dict.fromkeys(group_ids, final_version)
    assert all(r["name"].endswith(f" v{final_version}") for r in rows if r["id"] in group_ids)
    assert await pool.fetchval("SELECT count(*) FROM processed_commands") == len(ids)
    outbox = await pool.fetch(
        "SELECT group_id, group_version, event_id::text AS event_id FROM outbox ORDER BY id"
    )
    assert len(outbox) == len(ids)
    changes = [(r["group_id"], r["group_version"]) for r in outbox if r["group_id"] in group_ids]
    assert len(changes) == len(bodies)
    assert set(changes) == {(g, v) for g in group_ids for v in range(1, final_version + 1)}
    event_ids = {(r["group_id"], r["group_version"]): r["event_id"] for r in outbox}

    published: dict[str, list[int]] = defaultdict(list)
    for event in kafka.events():
        headers = headers_of(event)
        group_id, version = headers["ce_subject"], int(headers["ce_groupversion"])
        assert headers["ce_id"] == event_ids[group_id, version]
        assert json.loads(event.value)["version"] == version
        published[group_id].append(version)
    for group_id in group_ids:
        versions_out = published[group_id]
        assert sorted(set(versions_out)) == list(range(1, final_version + 1)), versions_out
        first_seen = list(dict.fromkeys(versions_out))
        assert first_seen == sorted(first_seen), (group_id, versions_out)
    assert kafka.records[settings.topic_dlq] == []
