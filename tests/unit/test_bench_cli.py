"""`customer-groups bench`'s arguments become the run's options, and nothing else does."""

from __future__ import annotations

import argparse

import pytest

from service.bench.options import PHASES, BenchOptions
from service.entrypoints.bench import options_from, register


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


def test_options_not_given_keep_their_defaults() -> None:
    assert options_from(_parse()) == BenchOptions()
    assert options_from(_parse("--smoke")) == BenchOptions.smoke()
    assert options_from(_parse("--smoke", "--commands", "40")) == BenchOptions.smoke(commands=40)


def test_every_option_given_reaches_the_run() -> None:
    args = _parse(
        *("--commands", "5", "--organizations", "6", "--rate", "7", "--latency-seconds", "1.5"),
        *("--relay-backlog", "8", "--preload", "9", "--baseline-seconds", "2.5"),
        *("--members", "2500", "--big-group", "3000"),
        *("--instances", "3", "--relay-process", "--external", "--keep", "--json"),
        *("--skip", "relay", "--skip", "latency", "--skip", "members"),
        *("--peer", "debezium"),
    )

    assert options_from(args) == BenchOptions(
        commands=5,
        organizations=6,
        rate=7,
        latency_seconds=1.5,
        relay_backlog=8,
        preload=9,
        baseline_seconds=2.5,
        members=2500,
        big_group=3000,
        instances=3,
        relay_process=True,
        external=True,
        keep=True,
        skip=frozenset({"relay", "latency", "members"}),
        peer="debezium",
    )


def test_the_peer_phase_runs_only_when_asked_and_alone_with_skips() -> None:
    assert options_from(_parse()).peer is None
    every_phase = [arg for phase in PHASES for arg in ("--skip", phase)]

    alone = options_from(_parse("--peer", "debezium", *every_phase))

    assert alone.peer == "debezium"
    assert alone.skip == frozenset(PHASES)


def test_an_unknown_peer_is_refused() -> None:
    with pytest.raises(SystemExit):
        _parse("--peer", "maxwell")
