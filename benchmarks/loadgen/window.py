"""A closed-loop run's steady pace, counted alike for every load generator from its per-request log.

Each of a run's `concurrency` clients sends its next request when its last one is answered. The run starts with
every client's first request at once (connections opening, the first batch filling behind a cold model) and
ends draining, with fewer requests in flight than clients. Neither edge is the server's steady pace, and how
much each weighs depends on the client: ghz waits for the calls in flight when its time is up, h2load's counted
run stops sending once its count is reached, the Python client stops starting requests at a deadline. Dividing
all answers by the whole run's time therefore measures the client's edges too, by up to a batch in ten on a
model as slow as MiniLM in a short run.

So the rate is counted between answers, over the same window for every client: it starts at the
`concurrency`-th answer (every client has had its first) and spans as many whole rounds of `concurrency`
answers (one per client, in a steady closed loop) as end before the last `concurrency` answers; the rate is the
answers in those rounds over the time they took. Where the server answers a batch of `concurrency` at a time, a
round is a batch and the window starts and ends at a batch's last answer: counting a part of a batch at either
end would be off by up to a batch. Latency percentiles are those of the answers in the window. A run too short
for a window (fewer than three answers per client) is counted whole: its answers over the time from its first
request sent to its last answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EDGE_ROUNDS = 1  # answers per client left out at each end of the run
MIN_ROUNDS = 3  # answers per client a run needs for a window


@dataclass(frozen=True)
class Answered:
    """One run's successful answers: when each arrived and how long it took (seconds; any common origin)."""

    ends_s: np.ndarray
    latencies_s: np.ndarray

    @classmethod
    def of(cls, ends_s, latencies_s) -> "Answered":
        ends, latencies = np.asarray(ends_s, dtype=np.float64), np.asarray(latencies_s, dtype=np.float64)
        if ends.shape != latencies.shape or ends.ndim != 1:
            raise ValueError(f"answer times {ends.shape} and latencies {latencies.shape} must be one row each")
        order = np.argsort(ends, kind="stable")
        return cls(ends[order], latencies[order])


def steady(answered: Answered, concurrency: int) -> dict:
    """`rps`, `p50_ms`, `p99_ms` of a run from its answers, and the window they were counted over
    (`window_s`, `window_requests`; `window: "whole run"` where the run was too short for one)."""
    count = len(answered.ends_s)
    if count == 0:
        return {}
    round_size = max(1, concurrency)
    if count >= MIN_ROUNDS * round_size:
        first = EDGE_ROUNDS * round_size - 1  # the last answer of the first round
        rounds = (count - EDGE_ROUNDS * round_size - 1 - first) // round_size
        last = first + rounds * round_size
        window_s = answered.ends_s[last] - answered.ends_s[first]
        latencies = answered.latencies_s[first + 1:last + 1]
        shape = "steady"
    else:
        window_s = answered.ends_s[-1] - float(np.min(answered.ends_s - answered.latencies_s))
        latencies = answered.latencies_s
        shape = "whole run"
    if window_s <= 0:  # every answer in one instant: no rate to tell
        return {}
    latency_ms = latencies * 1000.0
    return {"rps": len(latencies) / window_s, "p50_ms": float(np.percentile(latency_ms, 50)),
            "p99_ms": float(np.percentile(latency_ms, 99)), "window_s": round(float(window_s), 4),
            "window_requests": len(latencies), "window": shape}
