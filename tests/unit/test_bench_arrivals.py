"""The bench's clock for a run: when each watched topic had gained what the plan expects."""

from __future__ import annotations

import time

from service.bench.timing import arrivals


class Counts:
    """End-offset gains as successive polls would see them; the last one repeats."""

    def __init__(self, *polls: dict[str, int]) -> None:
        self._polls = list(polls)
        self.calls = 0
        self.times: list[float] = []

    async def gained(self) -> dict[str, int]:
        self.times.append(time.perf_counter())
        poll = self._polls[min(self.calls, len(self._polls) - 1)]
        self.calls += 1
        return poll


async def test_each_topic_is_timed_by_the_first_poll_that_saw_its_count() -> None:
    counts = Counts(
        {"events": 1, "results": 2},
        {"events": 3, "results": 5},
        {"events": 9, "results": 5},
        {"events": 10, "results": 5},
    )

    arrived = await arrivals(counts.gained, {"events": 10, "results": 5}, stall_s=5)

    assert counts.calls == 4
    assert counts.times[1] <= arrived["results"] < counts.times[2]
    assert counts.times[3] <= arrived["events"]


async def test_a_topic_that_stops_gaining_is_left_out_after_the_stall() -> None:
    counts = Counts({"events": 1, "results": 5}, {"events": 4, "results": 5})

    started = time.perf_counter()
    arrived = await arrivals(counts.gained, {"events": 10, "results": 5}, stall_s=0.1)

    assert set(arrived) == {"results"}
    assert time.perf_counter() - started >= 0.1
    assert counts.calls > 3
