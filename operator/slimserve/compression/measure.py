"""Measurements of models, all with the same threads and inputs: size, parameters, latency, throughput, metric.

Speeds are measured side by side, in rounds that alternate the models, never one model after the other: on a
shared machine the load changes within seconds, and a baseline timed while it was busy makes any compressed
model look fast.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from slimserve.api.compression_job import ModelMetrics, SparsityMetrics
from slimserve.artifacts.artifact import write_weights
from slimserve.compression.tasks import Task
from slimserve.models.torch_threads import torch_threads

Forward = Callable[..., torch.Tensor]
Release = Callable[[], object]
THROUGHPUT_BATCH = 32
WARMUP_CALLS = 3
MIN_ROUNDS, MAX_ROUNDS = 7, 25
# A figure's rounds of a costly model: at least MIN_ROUNDS of their calls only while that takes at most
# COSTLY_ROUNDS_S per model; beyond it fewer calls a round, then fewer rounds, never below FEWEST_ROUNDS (a
# batch through a billion-parameter model takes minutes on one thread: seven rounds of three would take hours).
COSTLY_ROUNDS_S = 60.0
FEWEST_ROUNDS = 3
# Unstructured zeros are "faster" only beyond this share over the dense model's throughput: two runs of one model
# on a quiet machine differ by about as much.
SPARSE_SPEEDUP_MARGIN = 0.05
# A figure whose rounds spread wider than this (interquartile range over median) is reported as not to be
# trusted: the machine was too busy, or too unsteady, for a comparison of speeds.
MAX_TRUSTED_SPREAD = 0.25


def serialized_size(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of the weights file these tensors make in an artifact (sparse packing included). Written to a
    scratch file and measured there: serializing into memory would hold a second copy of the weights."""
    with tempfile.TemporaryDirectory(prefix="slimserve-size-") as scratch:
        path = Path(scratch) / "weights.safetensors"
        write_weights(path, tensors)
        return path.stat().st_size


def time_call(
    forward: Forward, inputs: tuple[torch.Tensor, ...], *, runs: int, clock: Callable[[], float] = time.perf_counter
) -> list[float]:
    """Wall times in seconds of `runs` calls (without autograd, as the caller set it up).
    On a GPU each call is waited for: kernels run asynchronously, and a call returns before its work is done."""
    wait = _device_wait(inputs)
    times: list[float] = []
    for _ in range(runs):
        start = clock()
        forward(*inputs)
        wait()
        times.append(clock() - start)
    return times


def _device_wait(inputs: tuple[torch.Tensor, ...]) -> Callable[[], None]:
    devices = {t.device for t in inputs if isinstance(t, torch.Tensor) and t.device.type == "cuda"}
    if not devices:
        return lambda: None
    (device,) = devices
    return lambda: torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Figure:
    """A speed figure over measurement rounds: the median of the rounds and their quartiles."""

    median: float
    low: float  # first quartile
    high: float  # third quartile
    rounds: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Figure":
        if not values:
            raise ValueError("a figure needs at least one measured round")
        low, _, high = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
        return cls(statistics.median(values), low, high, len(values))

    @property
    def spread(self) -> float:
        """The interquartile range relative to the median: 0.1 means the middle half of the rounds lie
        within 10% of the median's size."""
        return (self.high - self.low) / self.median if self.median > 0 else 0.0

    @property
    def trusted(self) -> bool:
        return self.spread <= MAX_TRUSTED_SPREAD

    def scaled(self, factor: float) -> "Figure":
        return Figure(self.median * factor, self.low * factor, self.high * factor, self.rounds)


@dataclass(frozen=True)
class RoundPlan:
    """How many calls a round makes of each model, and how many rounds at least."""

    calls: int
    min_rounds: int


def round_plan(call_s: float, calls: int) -> RoundPlan:
    """`calls` a round and MIN_ROUNDS rounds, fewer of either when the slowest model's call takes `call_s`
    seconds and they would together take longer than COSTLY_ROUNDS_S."""
    if call_s * calls * MIN_ROUNDS <= COSTLY_ROUNDS_S:
        return RoundPlan(calls, MIN_ROUNDS)
    calls = max(1, min(calls, int(COSTLY_ROUNDS_S // (call_s * MIN_ROUNDS))))
    return RoundPlan(calls, max(FEWEST_ROUNDS, min(MIN_ROUNDS, int(COSTLY_ROUNDS_S // (call_s * calls)))))


@dataclass(frozen=True)
class Speed:
    """Latency at batch 1 (ms) and throughput at batch THROUGHPUT_BATCH (samples/s) of one model."""

    latency_ms: Figure
    throughput: Figure

    @property
    def trusted(self) -> bool:
        return self.latency_ms.trusted and self.throughput.trusted


def interleaved_rounds(
    forwards: Sequence[Forward],
    inputs: tuple[torch.Tensor, ...],
    *,
    calls: int,
    min_rounds: int,
    max_rounds: int,
    budget_s: float,
    clock: Callable[[], float] = time.perf_counter,
    release: Sequence[Release] | None = None,
    read_back_inputs: tuple[torch.Tensor, ...] | None = None,
) -> list[list[float]]:
    """Per forward, the median call time (seconds) of each round. A round runs every forward `calls` times,
    one forward after the other, in alternating order, so a machine that gets busier or quieter slows or
    speeds all of them alike; rounds go on until `budget_s` has passed (at least `min_rounds`).

    `release`, per forward: called after each of its blocks of calls, to drop what it holds resident but
    reads back when called (the pages of memory-mapped weights), so that the models measured side by side
    are not resident all at once. Its next block then starts with an untimed call that reads them back, on
    `read_back_inputs` (default `inputs`): a smaller batch reads the same weights for less."""
    per_forward: list[list[float]] = [[] for _ in forwards]
    deadline = clock() + budget_s
    for round_index in range(max_rounds):
        if round_index >= min_rounds and clock() >= deadline:
            break
        order = range(len(forwards)) if round_index % 2 == 0 else reversed(range(len(forwards)))
        for index in order:
            if release is not None:
                time_call(forwards[index], read_back_inputs or inputs, runs=1, clock=clock)
            per_forward[index].append(statistics.median(time_call(forwards[index], inputs, runs=calls, clock=clock)))
            if release is not None:
                release[index]()
    return per_forward


def measure_speeds(
    forwards: Sequence[Forward],
    task: Task,
    *,
    threads: int,
    budget_s: float = 3.0,
    clock: Callable[[], float] = time.perf_counter,
    release: Sequence[Release] | None = None,
) -> list[Speed]:
    """Latency and throughput of each forward, measured side by side in interleaved rounds, at `threads`
    CPU threads: the one measurement behind every speed figure a run reports (`budget_s` per forward and
    figure; a costly model's rounds as `round_plan` says). `release`: as `interleaved_rounds` takes it, also
    called after each forward's warm-up."""
    with torch_threads(threads):
        single = task.sample_inputs(1)
        batch = task.sample_inputs(THROUGHPUT_BATCH)
        rows = int(batch[0].shape[0])
        with torch.no_grad():  # plain tensors, as `Task.outputs` scores with: no second compiled graph
            single_s, batch_s = 0.0, 0.0
            for index, forward in enumerate(forwards):  # compile, allocate and fill caches outside the timed rounds
                single_s = max(single_s, _warm_up(forward, single, clock))
                batch_s = max(batch_s, _warm_up(forward, batch, clock))
                if release is not None:
                    release[index]()
            budget = budget_s * len(forwards)
            plan = round_plan(single_s, 5)
            latency = interleaved_rounds(forwards, single, calls=plan.calls, min_rounds=plan.min_rounds,
                                         max_rounds=MAX_ROUNDS, budget_s=budget, clock=clock, release=release)
            plan = round_plan(batch_s, 3)
            batch_time = interleaved_rounds(forwards, batch, calls=plan.calls, min_rounds=plan.min_rounds,
                                            max_rounds=MAX_ROUNDS, budget_s=budget, clock=clock, release=release,
                                            read_back_inputs=single)
    return [
        Speed(Figure.of(times).scaled(1000.0), Figure.of([rows / t for t in batch_times]))
        for times, batch_times in zip(latency, batch_time)
    ]


def _warm_up(forward: Forward, inputs: tuple[torch.Tensor, ...], clock: Callable[[], float]) -> float:
    """WARMUP_CALLS calls outside the rounds (the first compiles and allocates), or two when the second is so
    slow that its rounds will be cut short; returns the second call's seconds, which size the rounds."""
    time_call(forward, inputs, runs=1, clock=clock)
    (call_s,) = time_call(forward, inputs, runs=1, clock=clock)
    if round_plan(call_s, 1).min_rounds == MIN_ROUNDS:
        time_call(forward, inputs, runs=WARMUP_CALLS - 2, clock=clock)
    return call_s


def untrusted_speeds(names: Sequence[str], speeds: Sequence[Speed]) -> str | None:
    """A warning naming the figures whose rounds spread more than MAX_TRUSTED_SPREAD, or None."""
    unsteady = [
        f"{name} {what} {figure.spread:.0%}"
        for name, speed in zip(names, speeds, strict=True)
        for what, figure in (("latency", speed.latency_ms), ("throughput", speed.throughput))
        if not figure.trusted
    ]
    if not unsteady:
        return None
    return (
        f"speed figures not to be trusted, the machine was too busy or unsteady: rounds spread "
        f"(interquartile range / median) more than {MAX_TRUSTED_SPREAD:.0%} for {', '.join(unsteady)}"
    )


def speed_json(speed: Speed) -> dict[str, float]:
    """A model's speed as reports write it: the medians, rounded as in the status, and their spreads."""
    return {
        "latencyP50Ms": round(speed.latency_ms.median, 4),
        "latencySpread": round(speed.latency_ms.spread, 4),
        "throughput": round(speed.throughput.median, 2),
        "throughputSpread": round(speed.throughput.spread, 4),
        "rounds": speed.latency_ms.rounds,
    }


def model_metrics(speed: Speed, task: Task, *, size_bytes: int, parameters: int, metric: float) -> ModelMetrics:
    """The status's figures of one model: its size, its measured speed (medians, as reports write them) and
    its task metric."""
    figures = speed_json(speed)
    return ModelMetrics(
        size_bytes=size_bytes,
        parameters=parameters,
        latency_p50_ms=figures["latencyP50Ms"],
        throughput=figures["throughput"],
        metric=round(metric, 6),
        metric_name=task.metric_name,
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def zero_fraction(tensors: dict[str, torch.Tensor]) -> float:
    """Share of zero elements among the weight matrices and kernels (tensors of two or more dimensions)."""
    weights = [t for t in tensors.values() if t.dim() >= 2]
    total = sum(t.numel() for t in weights)
    return sum(t.numel() - int(torch.count_nonzero(t)) for t in weights) / total if total else 0.0


def sparsity_metrics(
    step: str, tensors: dict[str, torch.Tensor], *, packed_size_bytes: int, pruned: ModelMetrics, dense: ModelMetrics
) -> SparsityMetrics:
    """The zeros of an unstructured prune step, stored and served: `pruned` and `dense` (the model before the
    step, same shapes) measured side by side. Dense kernels multiply a zero like any weight, so the verdict is
    taken from the measurement, never assumed."""
    dense_size = sum(t.numel() * t.element_size() for t in tensors.values())
    speedup = round(pruned.throughput / dense.throughput, 4)
    faster = speedup >= 1 + SPARSE_SPEEDUP_MARGIN
    if faster:
        statement = f"faster: {speedup:.2f}x the throughput of the dense model"
    else:
        statement = (f"not faster (dense kernels): {speedup:.2f}x the throughput of the dense model; the zeros make "
                     f"the weights {packed_size_bytes / dense_size:.0%} of their dense size")
    return SparsityMetrics(step=step, zero_fraction=round(zero_fraction(tensors), 4), packed_size_bytes=packed_size_bytes,
                           dense_size_bytes=dense_size, speedup=speedup, faster=faster, statement=statement)
