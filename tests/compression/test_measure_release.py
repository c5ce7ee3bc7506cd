"""Side-by-side speed measurement that keeps one model's memory-mapped pages resident at a time: each
model's are released after its turn and read back, untimed, before its next (a fake clock and fake models:
no real timing, nothing here can flake)."""

from __future__ import annotations

import pytest
import torch

from slimserve.compression.measure import interleaved_rounds, measure_speeds
from tests.compression.test_measure import RowsTask


class ColdAfterRelease:
    """Fake models whose first call after a release is slow (their pages fault back in), with a log of
    calls and releases and a clock that advances only when they run."""

    def __init__(self):
        self.now = 0.0
        self.log: list[str] = []
        self.cold: set[str] = set()

    def clock(self) -> float:
        return self.now

    def model(self, name: str, cost_s: float):
        def forward(x: torch.Tensor) -> torch.Tensor:
            self.log.append(name)
            self.now += cost_s * (20.0 if name in self.cold else 1.0)
            self.cold.discard(name)
            return x

        return forward

    def release(self, name: str):
        def release() -> None:
            self.log.append(f"release {name}")
            self.cold.add(name)

        return release


def test_each_model_is_released_after_its_turn_and_read_back_outside_the_timing():
    fake = ColdAfterRelease()
    forwards = [fake.model("base", 0.010), fake.model("slim", 0.002)]
    release = [fake.release("base"), fake.release("slim")]
    base, slim = interleaved_rounds(forwards, (torch.zeros(1, 4),), calls=2, min_rounds=2, max_rounds=2, budget_s=0.0,
                                    clock=fake.clock, release=release)
    turn = lambda name: [name] * 3 + [f"release {name}"]  # noqa: E731  (one untimed call, two timed ones)
    assert fake.log == turn("base") + turn("slim") + turn("slim") + turn("base")
    assert base == [pytest.approx(0.010)] * 2 and slim == [pytest.approx(0.002)] * 2  # the cold calls are not timed


def test_speeds_released_between_turns_match_speeds_kept_resident():
    fake = ColdAfterRelease()
    forwards = [fake.model("base", 0.010), fake.model("slim", 0.002)]
    released = measure_speeds(forwards, RowsTask(), threads=1, budget_s=0.1, clock=fake.clock,
                              release=[fake.release("base"), fake.release("slim")])
    assert fake.log[:7] == ["base"] * 6 + ["release base"]  # warmed up, then released before the next one's turn
    assert fake.log[-1].startswith("release")  # the last turn is released too
    kept = measure_speeds(forwards, RowsTask(), threads=1, budget_s=0.1, clock=fake.clock)
    for with_release, resident in zip(released, kept):
        assert with_release.latency_ms.median == pytest.approx(resident.latency_ms.median)
        assert with_release.throughput.median == pytest.approx(resident.throughput.median)
