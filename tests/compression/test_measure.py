"""Speed measurement: models timed in alternating rounds, medians and spreads, with a fake clock (no real
timing, so nothing here can flake)."""

from __future__ import annotations

import pytest
import torch

from slimserve.compression.measure import (
    COSTLY_ROUNDS_S,
    FEWEST_ROUNDS,
    MAX_TRUSTED_SPREAD,
    MIN_ROUNDS,
    THROUGHPUT_BATCH,
    WARMUP_CALLS,
    Figure,
    RoundPlan,
    Speed,
    interleaved_rounds,
    measure_speeds,
    round_plan,
    untrusted_speeds,
)


class FakeClock:
    """Seconds that pass only when a fake model runs: `cost` per call, times the machine's load then."""

    def __init__(self, load=lambda now: 1.0):
        self.now = 0.0
        self.load = load
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def model(self, name: str, cost_s: float, per_row: bool = False):
        def forward(x: torch.Tensor) -> torch.Tensor:
            self.calls.append(name)
            self.now += cost_s * (x.shape[0] if per_row else 1) * self.load(self.now)
            return x

        return forward


class RowsTask:
    """Inputs of the requested batch size, as a task's `sample_inputs` gives them."""

    def sample_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(batch_size, 4),)


def test_figure_is_the_median_and_quartiles_of_the_rounds():
    figure = Figure.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (figure.median, figure.low, figure.high, figure.rounds) == (3.0, 2.0, 4.0, 5)
    assert figure.spread == pytest.approx(2.0 / 3.0)  # the outlier moves neither the median nor the quartiles
    assert not figure.trusted
    steady = Figure.of([10.0, 10.0, 10.2, 9.8, 10.0])
    assert steady.spread == pytest.approx(0.0) and steady.trusted
    assert Figure.of([5.0]).spread == 0.0
    assert steady.scaled(1000.0).median == pytest.approx(10000.0)
    with pytest.raises(ValueError, match="at least one"):
        Figure.of([])


def test_rounds_alternate_the_models_and_their_order():
    clock = FakeClock()
    forwards = [clock.model("base", 0.010), clock.model("slim", 0.002)]
    times = interleaved_rounds(forwards, (torch.zeros(1, 4),), calls=2, min_rounds=4, max_rounds=4, budget_s=0.0, clock=clock)
    assert clock.calls == ["base"] * 2 + ["slim"] * 2 + ["slim"] * 2 + ["base"] * 2 + ["base"] * 2 + ["slim"] * 2 + ["slim"] * 2 + ["base"] * 2
    assert times == [[pytest.approx(0.010)] * 4, [pytest.approx(0.002)] * 4]


def test_rounds_stop_at_the_budget_but_not_before_the_minimum():
    clock = FakeClock()
    forwards = [clock.model("base", 1.0), clock.model("slim", 1.0)]
    times = interleaved_rounds(forwards, (torch.zeros(1, 4),), calls=1, min_rounds=3, max_rounds=50, budget_s=10.0, clock=clock)
    assert len(times[0]) == len(times[1]) == 5  # 2 s a round: the budget of 10 s ends after the fifth
    times = interleaved_rounds(forwards, (torch.zeros(1, 4),), calls=1, min_rounds=3, max_rounds=50, budget_s=0.0, clock=clock)
    assert len(times[0]) == 3


def test_a_machine_that_gets_quiet_midway_does_not_change_the_comparison():
    # Four times slower during the first two rounds and some of the third: timed one after the other (all
    # baseline calls first), the baseline would be measured busy and the candidate quiet, 20x instead of 5x.
    clock = FakeClock(load=lambda now: 4.0 if now < 0.5 else 1.0)
    forwards = [clock.model("base", 0.010), clock.model("slim", 0.002)]
    base, slim = interleaved_rounds(forwards, (torch.zeros(1, 4),), calls=5, min_rounds=7, max_rounds=7, budget_s=0.0, clock=clock)
    assert max(base) == pytest.approx(0.040)  # the busy rounds are in there ...
    assert Figure.of(base).median / Figure.of(slim).median == pytest.approx(5.0)  # ... and change nothing


def test_speeds_are_milliseconds_and_rows_per_second_of_every_model():
    clock = FakeClock()
    forwards = [clock.model("base", 0.010, per_row=True), clock.model("slim", 0.002, per_row=True)]
    base, slim = measure_speeds(forwards, RowsTask(), threads=1, budget_s=0.5, clock=clock)
    assert base.latency_ms.median == pytest.approx(10.0) and slim.latency_ms.median == pytest.approx(2.0)
    assert base.throughput.median == pytest.approx(100.0) and slim.throughput.median == pytest.approx(500.0)
    assert base.latency_ms.rounds >= MIN_ROUNDS and base.trusted and slim.trusted
    assert untrusted_speeds(["baseline", "prune/structured"], [base, slim]) is None
    assert clock.calls[:2 * 3] == ["base"] * 6  # warm-up calls first, outside the rounds
    assert THROUGHPUT_BATCH == 32


def test_unsteady_rounds_are_flagged_with_the_figures_named():
    # Every third round runs on a machine three times as busy: the quartiles take in both kinds of rounds.
    clock = FakeClock()
    clock.load = lambda now: 3.0 if (len(clock.calls) // 10) % 3 == 0 else 1.0
    forwards = [clock.model("base", 0.010), clock.model("slim", 0.002)]
    times = interleaved_rounds(forwards, (torch.zeros(1, 4),), calls=5, min_rounds=9, max_rounds=9, budget_s=0.0, clock=clock)
    unsteady = [Figure.of(t) for t in times]
    assert [f.spread for f in unsteady] == [pytest.approx(2.0)] * 2
    steady = Figure.of([0.01] * 9)
    warning = untrusted_speeds(["baseline", "prune/structured"], [Speed(unsteady[0], steady), Speed(steady, steady)])
    assert warning is not None and f"more than {MAX_TRUSTED_SPREAD:.0%}" in warning
    assert "baseline latency 200%" in warning and "prune/structured" not in warning


def test_costly_models_get_fewer_calls_then_fewer_rounds_never_below_the_fewest():
    assert round_plan(0.001, 5) == RoundPlan(5, MIN_ROUNDS)  # cheap: the usual rounds
    cheapest_costly = COSTLY_ROUNDS_S / (5 * MIN_ROUNDS)
    assert round_plan(cheapest_costly, 5) == RoundPlan(5, MIN_ROUNDS)
    fewer_calls = round_plan(cheapest_costly * 2, 5)
    assert fewer_calls.calls < 5 and fewer_calls.min_rounds == MIN_ROUNDS
    assert fewer_calls.calls * MIN_ROUNDS * cheapest_costly * 2 <= COSTLY_ROUNDS_S
    assert round_plan(COSTLY_ROUNDS_S / 4, 3) == RoundPlan(1, 4)  # one call a round, as many rounds as fit
    assert round_plan(120.0, 3) == RoundPlan(1, FEWEST_ROUNDS)  # minutes a call: the fewest rounds still


def test_a_costly_batch_is_warmed_up_and_measured_in_fewer_calls_read_back_on_one_row():
    # A model whose batch of 32 takes 64 s (2 s a row) and a compressed one four times faster; their mapped
    # weights are released after each block and read back by an untimed call on the single-row inputs.
    clock = FakeClock()
    forwards = [clock.model("base", 2.0, per_row=True), clock.model("slim", 0.5, per_row=True)]
    released: list[str] = []
    rows_seen: list[int] = []
    recording = [
        lambda x, forward=forward: (rows_seen.append(int(x.shape[0])), forward(x))[1] for forward in forwards
    ]
    base, slim = measure_speeds(recording, RowsTask(), threads=1, budget_s=0.0, clock=clock,
                                release=[lambda: released.append("base"), lambda: released.append("slim")])
    assert base.throughput.median == pytest.approx(0.5) and slim.throughput.median == pytest.approx(2.0)
    assert base.throughput.rounds == slim.throughput.rounds == FEWEST_ROUNDS  # 64 s a call: three rounds of one
    assert base.latency_ms.rounds == MIN_ROUNDS  # 2 s a call: seven rounds, of fewer calls than five
    # warm-up of each model: every call of one row, two of the batch (the second too slow for a third)
    assert rows_seen[:10] == ([1] * WARMUP_CALLS + [THROUGHPUT_BATCH] * 2) * 2 and WARMUP_CALLS > 2
    batch_blocks = rows_seen[-2 * FEWEST_ROUNDS * 2:]
    assert batch_blocks == [1, THROUGHPUT_BATCH] * (2 * FEWEST_ROUNDS)  # each block read back on one row first
    assert len(released) == 2 + 2 * (MIN_ROUNDS + FEWEST_ROUNDS)


def test_cheap_models_keep_every_warm_up_call():
    clock = FakeClock()
    forwards = [clock.model("base", 0.001, per_row=True)]
    measure_speeds(forwards, RowsTask(), threads=1, budget_s=0.0, clock=clock)
    assert clock.calls[: 2 * WARMUP_CALLS] == ["base"] * (2 * WARMUP_CALLS)
    assert len(clock.calls) == 2 * WARMUP_CALLS + MIN_ROUNDS * (5 + 3)
