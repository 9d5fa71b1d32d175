"""The bench's figures that are arithmetic on what it measured."""

from __future__ import annotations

from service.bench.latency import percentiles_ms
from service.bench.report import ratios
from service.bench.table import target_met
from service.bench.timing import cpu_cores


def test_ratios_divide_the_services_figures_by_the_baselines_both_measured() -> None:
    figures = {
        "commands_per_s": 500.0,
        "relay_events_per_s": 0,
        "baselines": {
            "db_tx_per_s_c1": 2000.0,
            "db_batch_rows_per_s": 0,
            "kafka_roundtrip_msgs_per_s": 3000.0,
        },
    }

    assert ratios(figures) == {
        "commands_per_s/db_tx_per_s_c1": 0.25,
        "commands_per_s/kafka_roundtrip_msgs_per_s": 0.167,
    }
    assert ratios({"commands_per_s": 500.0}) == {}


def test_percentiles_are_picked_by_rank_and_given_in_milliseconds() -> None:
    seconds = [ms / 1000 for ms in range(100, 0, -1)]

    assert percentiles_ms(seconds) == {"p50": 51.0, "p95": 96.0, "p99": 100.0, "max": 100.0}
    assert percentiles_ms([]) == {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}


def test_cpu_cores_are_the_cpu_seconds_spent_per_second() -> None:
    assert cpu_cores(1.0, 2.5, 2.0) == 0.75
    assert cpu_cores(None, None, 2.0) is None


def test_a_target_is_met_at_least_at_most_or_within_a_percentage_of_one() -> None:
    assert target_met(100_000, 100_000, "≥") and not target_met(99_999, 100_000, "≥")
    assert target_met(50, 50, "≤") and not target_met(50.1, 50, "≤")
    assert target_met(1.2, 20, "±%") and target_met(0.8, 20, "±%")
    assert not target_met(1.21, 20, "±%") and not target_met(0.79, 20, "±%")
