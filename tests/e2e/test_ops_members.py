"""`customer-groups members import|export`, and the other ops tools on membership commands
and events, against the running service on real Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

from service.bootstrap import Container
from service.config import Settings
from service.domain.commands import AddCustomers
from service.ops import members, members_export, members_file
from service.ops.common import Advance, Progress
from service.ops.replay import Start, replay_oneoff
from tests.e2e.test_ops_cli import CliWithErrors, cli_runner, terminal_controls
from tests.e2e.test_ops_replay import all_consumed, database_state, settle
from tests.e2e.test_ops_state import compacted_topic, fold
from tests.support import KafkaProbe, command, headers_of


@pytest.fixture
def cli(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> CliWithErrors:
    return cli_runner(settings, monkeypatch, capsys)


async def new_group(kafka: KafkaProbe, organization: str = "org_a") -> str:
    made = await kafka.ask(command(organization_id=organization))
    return str(made["group"]["id"])


def add(group_id: str, ids: list[str], **fields: Any) -> dict[str, Any]:
    return command("group.customers.add", group_id=group_id, customer_ids=ids, **fields)


async def member_ids(pool: asyncpg.Pool, group_id: str) -> list[str]:
    rows = await pool.fetch("SELECT customer_id FROM group_members WHERE group_id = $1", group_id)
    return sorted(row["customer_id"] for row in rows)


def added_per_customer(kafka: KafkaProbe, group_id: str) -> collections.Counter[str]:
    """How many group.customers_added events named each customer of the group."""
    counts: collections.Counter[str] = collections.Counter()
    for record in kafka.events():
        if record.key == group_id.encode() and (
            headers_of(record)["ce_type"] == "group.customers_added"
        ):
            counts.update(json.loads(record.value)["customer_ids"])
    return counts


class KillAfter(Progress):
    """Cancels the import, as Ctrl-C does, once `ids` ids have their results: the commands
    in flight then are sent, and applied, without the tool seeing their results."""

    def __init__(self, ids: int) -> None:
        super().__init__(enabled=False)
        self.ids = ids
        self.seen = 0

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Advance]:
        running = asyncio.current_task()
        assert running is not None

        def advance(count: int = 1) -> None:
            self.seen += count
            if self.seen >= self.ids:
                running.cancel()

        yield advance


async def test_an_import_killed_half_way_then_run_again_adds_each_id_once(
    service: Container,
    kafka: KafkaProbe,
    cli: CliWithErrors,
    pool: asyncpg.Pool,
    settings: Settings,
    tmp_path: Path,
) -> None:
    group_id = await new_group(kafka)
    ids = [f"cus_{n:05d}" for n in range(2500)]
    random.Random(7).shuffle(ids)
    already = ids[::25]
    assert (await kafka.ask(add(group_id, already)))["customers"]["changed"] == 100
    path = tmp_path / "customers.txt"
    path.write_text("".join(f"{customer_id}\n" for customer_id in ids))

    killed = asyncio.create_task(
        members.import_members(
            settings,
            "org_a",
            group_id,
            path.read_bytes(),
            chunk_size=100,
            in_flight=3,
            progress=KillAfter(1000),
        )
    )
    with pytest.raises(asyncio.CancelledError):
        await killed
    await asyncio.sleep(0.5)
    partial = len(await member_ids(pool, group_id))
    assert 1000 <= partial < 2000

    code, out, err = await cli(
        "members", "import", "--organization", "org_a", "--group", group_id,
        "--chunk-size", "100", str(path), "--json",
    )  # fmt: skip
    summary = json.loads(out)
    assert code == 0, (out, err)
    assert (summary["ids"], summary["commands"], summary["answered"]) == (2500, 25, 25)
    # The commands the first run had applied answer with their stored results: had the
    # second run sent new commands, those ids would count as unchanged.
    assert (summary["added"], summary["unchanged"], summary["rejected"]) == (2400, 100, 0)
    assert summary["customer_count"] == 2500
    assert await member_ids(pool, group_id) == sorted(ids)

    await kafka.wait_for(
        settings.topic_events, lambda _: sum(added_per_customer(kafka, group_id).values()) >= 2500
    )
    await asyncio.sleep(0.5)
    per_customer = added_per_customer(kafka, group_id)
    assert set(per_customer) == set(ids)
    assert set(per_customer.values()) == {1}


async def test_a_dry_run_sends_nothing_and_a_group_not_found_is_refused_before_sending(
    service: Container,
    kafka: KafkaProbe,
    cli: CliWithErrors,
    pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    group_id = await new_group(kafka)
    other_organization = await new_group(kafka, "org_b")
    path = tmp_path / "customers.txt"
    path.write_text("".join(f"cus_{n}\n" for n in range(1500)) + "cus_x \n")
    await kafka.wait_events(2)
    seen = await settle(kafka)

    code, out, _ = await cli(
        "members", "import", "--organization", "org_a", "--group", group_id, str(path),
        "--dry-run", "--json",
    )  # fmt: skip
    plan = json.loads(out)
    assert code == 1
    assert (plan["dry_run"], plan["ids"], plan["commands"], plan["sent"]) == (True, 1500, 2, 0)
    assert (plan["bad_lines"], plan["customer_count"]) == (1, 0)

    code, out, err = await cli(
        "members", "import", "--organization", "org_a", "--group", group_id, str(path),
        "--dry-run",
    )  # fmt: skip
    assert code == 1
    assert "dry run, nothing sent: 1500 ids in 2 commands" in out
    assert "line 1501: must not start or end with whitespace: cus_x " in err

    for organization, group in (
        ("org_a", other_organization),
        ("org_b", group_id),
        ("org_a", "grp_unknown"),
    ):
        code, out, _ = await cli(
            "members", "import", "--organization", organization, "--group", group, str(path),
            "--json",
        )  # fmt: skip
        assert (code, "has no live group" in json.loads(out)["error"]) == (1, True), group

    assert await settle(kafka) == seen
    assert await pool.fetchval("SELECT count(*) FROM group_members") == 0


async def test_bad_lines_are_reported_by_number_escaped_and_the_rest_is_sent(
    service: Container,
    kafka: KafkaProbe,
    cli: CliWithErrors,
    pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    group_id = await new_group(kafka)
    path = tmp_path / "customers.txt"
    lines = [
        b"cus_1",
        b"  cus_2",
        b"",
        b"cus_3\r",
        b"cus\x1b]0;pwned\x07",
        b"c" * 129,
        b"cus_\xff",
        "cus_\u202e4".encode(),
        b"cus_1",
        b"cus_5\t",
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")

    code, out, err = await cli(
        "members", "import", "--organization", "org_a", "--group", group_id, str(path)
    )
    assert code == 1
    assert terminal_controls(out + err) == []
    reported = [line.split(":")[0] for line in err.splitlines() if line.startswith("line ")]
    assert reported == ["line 2", "line 5", "line 6", "line 7", "line 10"]
    assert "line 5: must not contain control characters: cus\\x1b]0;pwned\\x07" in err
    assert "line 7: not UTF-8: cus_\\udcff" in err
    assert "3 added, 0 unchanged, 0 rejected, 0 not sent; 5 bad lines skipped" in out
    assert await member_ids(pool, group_id) == sorted(["cus_1", "cus_3", "cus_\u202e4"])

    code, out, _ = await cli(
        "members", "import", "--organization", "org_a", "--group", group_id, str(path), "--json"
    )
    again = json.loads(out)
    assert code == 1
    assert [(bad["line"], bad["problem"]) for bad in again["bad_line_sample"]] == [
        (2, "must not start or end with whitespace"),
        (5, "must not contain control characters"),
        (6, "must be 1-128 characters"),
        (7, "not UTF-8"),
        (10, "must not start or end with whitespace"),
    ]
    assert (again["added"], again["bad_lines"], again["sent"]) == (3, 5, 1)

    table = tmp_path / "customers.csv"
    table.write_text(
        'email,customer_id\r\na@example.com,cus_6\r\n"b,@example.com","cus,7"\r\n'
        "c@example.com\r\nd@example.com, cus_8\r\n\r\ne@example.com,cus_9\r\n"
    )
    code, out, err = await cli(
        "members", "import", "--organization", "org_a", "--group", group_id,
        "--column", "customer_id", str(table),
    )  # fmt: skip
    assert code == 1
    assert "line 4: no customer_id column" in err
    assert "line 5: must not start or end with whitespace:  cus_8" in err
    assert "3 added" in out
    assert await member_ids(pool, group_id) == sorted(
        ["cus_1", "cus_3", "cus_\u202e4", "cus_6", "cus,7", "cus_9"]
    )
    code, out, _ = await cli(
        "members", "import", "--organization", "org_a", "--group", group_id,
        "--column", "id", str(table), "--json",
    )  # fmt: skip
    assert (code, json.loads(out)["error"]) == (
        1,
        "the file's header has no column 'id' (it has: 'email', 'customer_id')",
    )


async def test_export_writes_exactly_the_live_groups_members_in_order(
    service: Container,
    kafka: KafkaProbe,
    cli: CliWithErrors,
    settings: Settings,
    tmp_path: Path,
) -> None:
    group_id = await new_group(kafka)
    other = await new_group(kafka)
    ids = [f"cus_{n:04d}" for n in range(2300)]
    shuffled = random.Random(3).sample(ids, len(ids))
    for start in range(0, len(shuffled), 1000):
        assert (await kafka.ask(add(group_id, shuffled[start : start + 1000])))["code"] == 200
    removed = shuffled[:50]
    remove = command("group.customers.remove", group_id=group_id, customer_ids=removed)
    assert (await kafka.ask(remove))["customers"]["changed"] == 50
    assert (await kafka.ask(add(other, ["cus_x", "cus_0001"])))["code"] == 200
    expected = sorted(set(ids) - set(removed))

    output = tmp_path / "members.txt"
    code, out, _ = await cli(
        "members", "export", "--organization", "org_a", "--group", group_id,
        "--output", str(output), "--json",
    )  # fmt: skip
    assert (code, json.loads(out)["exported"]) == (0, len(expected))
    assert output.read_text().split("\n") == [*expected, ""]

    code, out, _ = await cli("members", "export", "--organization", "org_a", "--group", group_id)
    assert (code, out.split("\n")) == (0, [*expected, ""])

    batches: list[list[str]] = []
    count = await members_export.export_members(
        settings, "org_a", group_id, lambda ids: batches.append(list(ids)), batch_size=7
    )
    assert count == len(expected)
    assert [customer_id for batch in batches for customer_id in batch] == expected
    assert max(len(batch) for batch in batches) == 7

    assert (await kafka.ask(command("group.delete", group_id=other)))["code"] == 200
    for organization, group in (("org_b", group_id), ("org_a", other), ("org_a", "grp_none")):
        target = tmp_path / f"{organization}-{group}.txt"
        code, out, _ = await cli(
            "members", "export", "--organization", organization, "--group", group,
            "--output", str(target), "--json",
        )  # fmt: skip
        assert (code, "has no live group" in json.loads(out)["error"]) == (1, True), group
    assert sorted(await asyncio.to_thread(os.listdir, tmp_path)) == ["members.txt"]


async def members_state(pool: asyncpg.Pool) -> dict[str, Any]:
    rows = await pool.fetch(
        "SELECT group_id, customer_id, added_at FROM group_members ORDER BY 1, 2"
    )
    return {**await database_state(pool), "members": [tuple(row) for row in rows]}


async def test_replay_of_membership_commands_applies_nothing_twice(
    service: Container, kafka: KafkaProbe, pool: asyncpg.Pool, settings: Settings
) -> None:
    group_id = await new_group(kafka)
    assert (await kafka.ask(add(group_id, ["a", "b", "c"])))["customers"]["changed"] == 3
    second = add(group_id, ["b", "c", "d"])
    assert (await kafka.ask(second))["customers"] == {"changed": 1, "unchanged": 2}
    remove = command("group.customers.remove", group_id=group_id, customer_ids=["a", "zz"])
    assert (await kafka.ask(remove))["customers"] == {"changed": 1, "unchanged": 1}
    assert (await kafka.ask(add("grp_unknown", ["a"])))["code"] == 404
    assert (await kafka.ask(add(group_id, [" padded"])))["code"] == 422
    await kafka.wait_events(4)
    await all_consumed(settings)
    before = await members_state(pool)
    seen = await settle(kafka)

    outcome = await replay_oneoff(settings, Start())
    tally = outcome.tally
    assert (tally.records, tally.already_done, tally.reapplied, tally.rejected) == (6, 5, 0, 1)
    assert await members_state(pool) == before
    after = await settle(kafka)
    assert after[settings.topic_events] == seen[settings.topic_events]
    assert after[settings.topic_state] == seen[settings.topic_state]

    # Forgotten (as past the processed-command retention), a membership command is applied
    # again, and finds everything already so.
    await pool.execute("DELETE FROM processed_commands WHERE command_id = $1", second["command_id"])
    outcome = await replay_oneoff(settings, Start())
    assert (outcome.tally.reapplied, outcome.tally.already_done) == (1, 4)
    await kafka.wait_for(
        settings.topic_results, lambda _: len(kafka.results_for(second["command_id"])) == 3
    )
    assert kafka.results_for(second["command_id"])[-1]["customers"] == {
        "changed": 0,
        "unchanged": 3,
    }
    now = await members_state(pool)
    assert (now["groups"], now["members"]) == (before["groups"], before["members"])
    assert (await settle(kafka))[settings.topic_events] == seen[settings.topic_events]


async def test_send_republish_rebuild_state_and_tail_on_memberships(
    service: Container,
    kafka: KafkaProbe,
    cli: CliWithErrors,
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    group_id = await new_group(kafka)
    code, out, _ = await cli(
        "send", "--type", "add-customers", "--organization", "org_a", "--group", group_id,
        "--customer", "cus_1", "--customer", "cus_2", "--customer", "cus_3",
        "--customer", "cus_4", "--json",
    )  # fmt: skip
    sent = json.loads(out)
    assert (code, sent["command"]["type"], sent["result"]["customers"]) == (
        0,
        "group.customers.add",
        {"changed": 4, "unchanged": 0},
    )
    code, out, _ = await cli(
        "send", "--type", "remove-customers", "--organization", "org_a", "--group", group_id,
        "--customer", "cus_2", "--json",
    )  # fmt: skip
    assert (code, json.loads(out)["result"]["group"]["customer_count"]) == (0, 3)
    originals = list(await kafka.wait_events(3))

    code, out, _ = await cli(
        "republish", "--group", group_id, "--type", "customers_added",
        "--type", "group.customers_removed", "--json",
    )  # fmt: skip
    assert (code, json.loads(out)["published"]) == (0, 2)
    events = await kafka.wait_for(settings.topic_events, lambda records: len(records) == 5)
    assert [(headers_of(r)["ce_id"], r.value) for r in events[3:]] == [
        (headers_of(r)["ce_id"], r.value) for r in originals[1:]
    ]

    topic = await compacted_topic(settings)
    reader = KafkaProbe(settings)
    await reader.start(topic)
    try:
        code, out, _ = await cli("rebuild-state", "--to-topic", topic, "--json")
        assert (code, json.loads(out)["published"]) == (0, 1)
        state = fold(await reader.wait_for(topic, lambda records: len(records) == 1))
    finally:
        await reader.stop()
    assert state[group_id]["customer_count"] == 3
    assert "customer_ids" not in state[group_id]

    code, out, _ = await cli("tail", "events", "--from-beginning", "--timeout", "0.5")
    lines = out.splitlines()
    assert code == 0
    assert "customers +4 [cus_1, cus_2, cus_3, …] count=4 ce_id=" in lines[1]
    assert "customers -1 [cus_2] count=3 ce_id=" in lines[2]
    code, out, _ = await cli("tail", "results", "--from-beginning", "--timeout", "0.5")
    assert out.splitlines()[1].endswith(" v2 customers: 4 changed, 0 unchanged")
    code, out, _ = await cli("tail", "state", "--from-beginning", "--timeout", "0.5")
    assert out.splitlines()[-1].endswith(" customers=3")


def test_the_import_judges_an_id_as_the_command_does() -> None:
    samples = [
        "cus_1",
        "",
        " a",
        "a ",
        "a\u00a0",
        "\u2003a",
        "a\x00b",
        "a\x1fb",
        "\x1c",
        "a\x7f",
        "a\x85",
        "a\x9fb",
        "a\xa0b",
        "\u202ea",
        "a\u2028b",
        "x" * 128,
        "x" * 129,
        "é" * 128,
    ]
    for sample in samples:
        try:
            AddCustomers.model_validate(
                {
                    "command_id": "c-1",
                    "type": "group.customers.add",
                    "organization_id": "org_a",
                    "group_id": "grp_1",
                    "customer_ids": [sample],
                }
            )
        except ValidationError:
            valid = False
        else:
            valid = True
        assert (members_file.line_problem(sample) is None) == valid, repr(sample)
