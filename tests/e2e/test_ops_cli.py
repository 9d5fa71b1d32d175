"""The operations tools through `customer-groups ...`: arguments, JSON output, exit codes."""

from __future__ import annotations

import asyncio
import json
import unicodedata
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from service.bootstrap import Container
from service.config import Settings
from service.entrypoints.cli import main
from service.ops.common import parse_partition_offset, parse_time
from tests.e2e.test_hostile_input import insert_poison
from tests.support import KafkaProbe, command, headers_of

Cli = Callable[..., Awaitable[tuple[int, str]]]


def environment(settings: Settings) -> dict[str, str]:
    """The variables that make `Settings()` in the CLI equal to this test's settings."""
    return {
        name.upper(): _text(value)
        for name, value in settings.model_dump().items()
        if value is not None
    }


def _text(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


CliWithErrors = Callable[..., Awaitable[tuple[int, str, str]]]


def cli_runner(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> CliWithErrors:
    """`customer-groups ARGV` with this test's settings: (exit code, stdout, stderr)."""
    for name, value in environment(settings).items():
        monkeypatch.setenv(name, value)

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        # main() runs its own event loop, so it needs a thread of its own.
        code = await asyncio.to_thread(main, list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def cli(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Cli:
    run = cli_runner(settings, monkeypatch, capsys)

    async def stdout_only(*argv: str) -> tuple[int, str]:
        code, out, _ = await run(*argv)
        return code, out

    return stdout_only


def one(output: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(output)
    return data


async def test_send_and_tail(
    service: Container, kafka: KafkaProbe, cli: Cli, tmp_path: Path
) -> None:
    code, out = await cli(
        "send", "--type", "create", "--organization", "org_a", "--name", "VIP", "--json"
    )
    sent = one(out)
    assert (code, sent["status"], sent["result"]["code"]) == (0, "done", 201)
    group = sent["result"]["group"]
    assert sent["command"]["command_id"] == sent["result"]["command_id"]

    code, out = await cli(
        "send", "--type", "create", "--organization", "org_a", "--name", "vip", "--json"
    )
    assert (code, one(out)["result"]["code"]) == (1, 409)

    update = tmp_path / "update.json"
    update.write_text(json.dumps({"type": "group.update", "group_id": group["id"], "name": "x"}))
    code, out = await cli(
        "send", "--file", str(update), "--organization", "org_a", "--name", "Gold"
    )
    assert code == 0
    assert "accepted 200" in out
    assert '"name": "Gold"' in out

    code, out = await cli(
        "send", "--type", "delete", "--organization", "org_a", "--group", group["id"], "--dry-run"
    )
    assert (code, out.splitlines()[0]) == (0, "dry run, not sent:")

    code, out = await cli("tail", "events", "--from-beginning", "--limit", "2", "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [line["headers"]["ce_type"] for line in lines] == ["group.created", "group.updated"]
    assert lines[1]["value"]["name"] == "Gold"

    code, out = await cli("tail", "results", "--from-beginning", "--timeout", "0.5")
    assert code == 0
    assert [line.split()[2:4] for line in out.splitlines()] == [
        ["accepted", "201"],
        ["rejected", "409"],
        ["accepted", "200"],
    ]
    await asyncio.sleep(0.3)
    assert len(kafka.results()) == 3


async def test_send_without_a_service_times_out(cli: Cli) -> None:
    code, out = await cli(
        "send",
        "--type",
        "create",
        "--organization",
        "org_a",
        "--name",
        "X",
        "--timeout",
        "0.5",
        "--json",
    )
    assert (code, one(out)["status"], one(out)["result"]) == (2, "timeout", None)


async def test_kafka_or_postgresql_out_of_reach_is_an_error_not_a_traceback(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody:secret@127.0.0.1:1/nowhere")
    code, out = await cli("republish", "--dry-run", "--json")
    assert code == 1
    assert "PostgreSQL" in one(out)["error"]
    assert "secret" not in out
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    code, out = await cli("dlq", "list", "--json")
    assert (code, one(out)["error"].startswith("Kafka (127.0.0.1:1) failed")) == (1, True)


async def test_the_widest_republish_and_the_service_own_topics_are_refused(
    cli: Cli, settings: Settings
) -> None:
    code, out = await cli("republish", "--json")
    assert (code, "--all" in one(out)["error"]) == (1, True)
    for tool in (["republish", "--organization", "org_a"], ["rebuild-state"]):
        code, out = await cli(*tool, "--to-topic", settings.topic_commands, "--json")
        assert (code, "own topics" in one(out)["error"]) == (1, True), tool


async def test_the_ops_tools_print_json_and_dry_runs_write_nothing(
    service: Container, kafka: KafkaProbe, cli: Cli, pool: asyncpg.Pool, settings: Settings
) -> None:
    a = await kafka.ask(command(name="A"))
    await kafka.ask(command(organization_id="org_b", name="B"))
    await kafka.ask(command("group.delete", group_id=a["group"]["id"]))
    await kafka.send(b"{", key=b"org_a")
    await kafka.wait_events(3)
    await kafka.wait_for(settings.topic_dlq, lambda r: len(r) == 1)
    rows = await pool.fetch("SELECT * FROM customer_groups ORDER BY id")
    seen = {topic: len(records) for topic, records in kafka.records.items()}

    dry_runs: dict[tuple[str, ...], dict[str, object]] = {
        ("republish", "--organization", "org_a"): {"matched": 2, "published": 0},
        ("rebuild-state",): {"live": 1, "tombstones": 1, "published": 0},
        ("dlq", "redrive"): {"matched": 0, "sent": 0, "skipped_still_malformed": {"not_json": 1}},
        ("replay", "--from-beginning"): {"records": 4, "already_done": 3, "invalid": 1},
        ("replay", "--from-beginning", "--mode", "reset"): {"replayed": 4},
    }
    for argv, expected in dry_runs.items():
        code, out = await cli(*argv, "--dry-run", "--json")
        data = one(out)
        assert code == 0, argv
        assert data["dry_run"] is True, argv
        assert {k: data[k] for k in expected} == expected, argv
    await asyncio.sleep(0.5)
    assert {topic: len(records) for topic, records in kafka.records.items()} == seen
    assert await pool.fetch("SELECT * FROM customer_groups ORDER BY id") == rows

    code, out = await cli("dlq", "list", "--json")
    listed = one(out)
    assert (code, listed["matched"], listed["reasons"]) == (0, 1, {"not_json": 1})
    assert listed["sample"][0]["value"] == "{"

    code, out = await cli("replay", "--from-beginning", "--json")
    replayed = one(out)
    assert (code, replayed["reapplied"], replayed["already_done"]) == (0, 0, 3)

    code, out = await cli("replay", "--from-beginning", "--mode", "reset", "--json")
    assert code == 1
    assert "active member" in one(out)["error"]

    code, out = await cli("republish", "--organization", "org_b", "--json")
    assert (code, one(out)["published"]) == (0, 1)
    events = await kafka.wait_for(
        settings.topic_events, lambda r: len(r) == seen[settings.topic_events] + 1
    )
    copy = events[-1]
    [original] = [r for r in kafka.events()[:-1] if headers_of(r)["ce_organizationid"] == "org_b"]
    assert headers_of(copy)["ce_id"] == headers_of(original)["ce_id"]

    code, out = await cli("republish", "--since", "30d")
    assert code == 1
    assert out == ""

    with pytest.raises(SystemExit):
        await cli("replay", "--since", "yesterday")


def test_time_and_offset_arguments() -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    ten = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    assert parse_time("2h", now) == ten
    assert parse_time("120m", now) == ten
    assert parse_time("7200s", now) == ten
    assert parse_time("7d", now) == datetime(2026, 11, 13, 12, 0, tzinfo=UTC)
    assert parse_time("1w", now) == datetime(2026, 11, 13, 12, 0, tzinfo=UTC)
    assert parse_time("2026-11-20T10:00Z") == ten
    assert parse_time("2026-11-20T10:00") == ten
    assert parse_time("2026-11-20T11:00+01:00") == ten
    with pytest.raises(ValueError, match="neither a duration"):
        parse_time("yesterday")
    assert parse_partition_offset("3:1500") == (3, 1500)
    with pytest.raises(ValueError, match="PARTITION:OFFSET"):
        parse_partition_offset("3")


# An OSC that retitles the terminal, a clear screen, a CSI in its one-byte C1 form, a
# right-to-left override, and a newline that would forge a line of output.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202etxt.exe\x7f\n  0:0 forged"


def terminal_controls(output: str) -> list[str]:
    return [
        c
        for c in output.replace("\n", "")
        if unicodedata.category(c) == "Cc" or unicodedata.bidirectional(c) == "RLO"
    ]


async def test_a_hostile_dead_letter_prints_no_terminal_controls(
    kafka: KafkaProbe, cli: Cli, settings: Settings
) -> None:
    hostile = HOSTILE.encode()
    await kafka.producer.send_and_wait(
        settings.topic_dlq,
        b'{"name": "' + hostile + b'"}',
        key=hostile,
        headers=[
            ("dlq_reason", hostile),
            ("dlq_error", hostile),
            ("dlq_source_topic", hostile),
            ("dlq_source_partition", b"0"),
            ("dlq_source_offset", b"7"),
        ],
    )
    await kafka.wait_for(settings.topic_dlq, lambda r: len(r) == 1)

    code, listed = await cli("dlq", "list")
    assert code == 0
    assert terminal_controls(listed) == []
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u202etxt.exe\\x7f\\n  0:0 forged" in listed
    assert not any(line.startswith("  0:0 forged") for line in listed.splitlines())

    code, followed = await cli("tail", "dlq", "--from-beginning", "--timeout", "0.5")
    assert code == 0
    assert terminal_controls(followed) == []
    assert len(followed.splitlines()) == 1

    code, listed_json = await cli("dlq", "list", "--json")
    assert code == 0
    assert terminal_controls(listed_json) == []
    [item] = one(listed_json)["sample"]
    assert (item["key"], item["reason"], item["error"]) == (HOSTILE, HOSTILE, HOSTILE)

    code, followed_json = await cli("tail", "dlq", "--from-beginning", "--timeout", "0.5", "--json")
    assert code == 0
    assert terminal_controls(followed_json) == []
    assert one(followed_json)["headers"]["dlq_error"] == HOSTILE


async def test_outbox_parked_lists_what_the_relay_set_aside_and_release_lets_its_group_go_on(
    pool: asyncpg.Pool, service: Container, kafka: KafkaProbe, cli: Cli
) -> None:
    await insert_poison(pool)
    await wait_parked(pool, 2)

    code, out = await cli("outbox", "parked", "--json")
    rows = one(out)["parked"]
    assert code == 0
    assert [(r["group_id"], r["group_version"]) for r in rows] == [
        ("grp_poison", 1),
        ("grp_poison", 2),
    ]
    assert "larger than" in rows[0]["reason"]
    assert "waits behind" in rows[1]["reason"]

    code, out = await cli("outbox", "release", "--event-id", rows[0]["event_id"], "--json")
    assert (code, one(out)["requeued"]) == (0, 1)
    [event] = await kafka.wait_for(
        service.settings.topic_events, lambda rs: any(r.key == b"grp_poison" for r in rs)
    )
    assert headers_of(event)["ce_groupversion"] == "2"
    code, out = await cli("outbox", "parked", "--json")
    assert one(out)["parked"] == []

    code, out = await cli("outbox", "release", "--event-id", rows[0]["event_id"])
    assert code == 1


async def wait_parked(pool: asyncpg.Pool, count: int) -> None:
    async with asyncio.timeout(30):
        while await pool.fetchval(PARKED) != count:
            await asyncio.sleep(0.05)


PARKED = "SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL AND published_at IS NULL"
