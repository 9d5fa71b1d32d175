"""The benchmark at toy sizes, so it keeps working; its figures are not judged here."""

from __future__ import annotations

import pytest

from service.bench.options import BenchOptions
from service.bench.runner import run_bench
from service.config import Settings


def _settings(endpoints: tuple[str, str]) -> Settings:
    database_url, kafka = endpoints
    return Settings.model_validate({"database_url": database_url, "kafka_bootstrap_servers": kafka})


@pytest.mark.timeout(120)
async def test_bench_smoke_measures_every_figure(endpoints: tuple[str, str]) -> None:
    settings = _settings(endpoints)
    options = BenchOptions.smoke()

    report = await run_bench(options, settings)

    assert report.problems == []
    f = report.figures
    assert f["throughput"]["results"] == options.commands
    assert f["throughput"]["events"] == f["throughput"]["events_expected"] > 0
    assert f["commands_per_s"] > 0
    assert 0 < f["latency_ms"]["p50"] <= f["latency_ms"]["p95"] <= f["latency_ms"]["p99"]
    assert f["latency_rate"] == options.rate
    assert f["relay_events_per_s"] > 0
    assert f["client_send_many_commands_per_s"] > 0
    assert f["client_raw_commands_per_s"] > 0
    assert f["client_feed_events_per_s"] > 0
    assert f["rss_mb"] > 0
    assert f["rss_mb_relay"] > 0
    for name in (
        "db_tx_per_s_c1",
        "db_tx_per_s_pool",
        "db_batch_rows_per_s",
        "kafka_roundtrip_msgs_per_s",
    ):
        assert f["baselines"][name] > 0, name
    assert f["ratios"]["commands_per_s/db_batch_rows_per_s"] > 0
    for name in (
        "members_per_s",
        "members_baseline_rows_per_s",
        "members_vs_baseline",
        "members_add_empty_ms",
        "members_add_big_ms",
        "members_add_big_vs_empty",
        "members_delete_result_ms",
        "members_purge_s",
        "members_load_quiet_p99_ms",
        "members_load_delete_p99_ms",
        "members_load_delete_vs_quiet",
    ):
        assert isinstance(f[name], int | float) and f[name] > 0, name
    assert f["members"]["added"]["events"] == f["members"]["added"]["commands"] > 0
    assert f["members"]["delete"]["group_members"] >= options.big_group
    tracing = f["tracing"]
    assert len(tracing["commands_per_s_off"]) == len(tracing["commands_per_s_on"]) == 4
    assert tracing["ratio_on_off"] > 0
    # Each traced run (of half the commands) exports at least a process span per command.
    assert tracing["spans_exported"] >= 4 * (options.commands // 2)
    assert tracing["spans_lost"] == 0


@pytest.mark.timeout(120)
async def test_bench_smoke_with_the_relay_in_a_process_of_its_own(
    endpoints: tuple[str, str],
) -> None:
    settings = _settings(endpoints)
    options = BenchOptions.smoke(
        relay_process=True, skip=frozenset({"baselines", "latency", "relay", "members", "tracing"})
    )

    report = await run_bench(options, settings)

    assert report.problems == []
    f = report.figures
    assert f["sizes"]["relay_process"] is True
    assert len(f["service_pids"]) == 2
    assert f["throughput"]["results"] == options.commands
    assert f["throughput"]["events"] == f["throughput"]["events_expected"] > 0


@pytest.mark.timeout(120)
async def test_bench_smoke_compares_preexisting_groups_by_two_runs_each(
    endpoints: tuple[str, str],
) -> None:
    settings = _settings(endpoints)
    options = BenchOptions.smoke(
        preload=3000, skip=frozenset({"baselines", "latency", "relay", "members", "tracing"})
    )

    report = await run_bench(options, settings)

    assert report.problems == []
    f = report.figures
    runs = f["groups_preexisting_runs"]
    assert sorted(runs) == ["1000", "3000"]
    assert all(len(each) == 2 and min(each) > 0 for each in runs.values())
    means = {size: sum(each) / 2 for size, each in runs.items()}
    assert f["groups_preexisting"] == pytest.approx(means, abs=0.1)
    assert f["commands_per_s"] == f["groups_preexisting"]["3000"]
    change = (means["3000"] / means["1000"] - 1) * 100
    assert f["groups_preexisting_change_pct"] == pytest.approx(change, abs=0.1)
