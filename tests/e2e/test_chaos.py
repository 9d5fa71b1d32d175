"""The short chaos run of the test suite: two instances and two relays under a steady load,
a consumer killed with -9 and the leading relay paused past its lock's retry; nothing may be
lost, doubled, reordered or invented. (`make chaos` runs every fault kind, for longer.)"""

from __future__ import annotations

import pytest

from service.chaos.checker import MUST_BE_ZERO
from service.chaos.options import ChaosOptions
from service.chaos.runner import run_chaos
from service.config import Settings


@pytest.mark.timeout(300)
async def test_a_short_chaos_run_finds_nothing_lost_doubled_reordered_or_invented(
    endpoints: tuple[str, str],
) -> None:
    database_url, kafka = endpoints
    settings = Settings.model_validate(
        {"database_url": database_url, "kafka_bootstrap_servers": kafka}
    )
    options = ChaosOptions(
        seconds=60,
        instances=2,
        relays=2,
        organizations=20,
        rate=100,
        faults=("kill", "pause_relay"),
        each=1,
    )

    report = await run_chaos(options, settings)

    assert {name: report[name] for name in MUST_BE_ZERO} == dict.fromkeys(MUST_BE_ZERO, 0)
    assert report["settled"] is True
    assert report["passed"] is True
    # The run did what it claims: the load went through, both faults happened.
    assert report["commands_sent"] > 0.8 * options.rate * options.seconds
    assert report["duplicates_sent"] > 0
    assert report["events"] > 0
    assert [f["kind"] for f in report["faults"]] == [k for _, k in options.schedule()]
    assert all(f["results_again_s"] is not None for f in report["faults"])
