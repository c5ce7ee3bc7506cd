"""Measurements of one model, all with the same threads and inputs: size, parameters, latency, throughput, metric."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from safetensors.torch import save as safetensors_bytes

from slimserve.api.compression_job import ModelMetrics
from slimserve.artifacts.sparse import pack_sparse
from slimserve.compression.tasks import Task, as_inference

Forward = Callable[..., torch.Tensor]
THROUGHPUT_BATCH = 32


def serialized_size(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of the weights file these tensors make in an artifact (sparse packing included)."""
    stored, _ = pack_sparse({name: t.detach().contiguous() for name, t in tensors.items()})
    return len(safetensors_bytes({name: t.clone() for name, t in stored.items()}))


def time_call(forward: Forward, inputs: tuple[torch.Tensor, ...], *, warmup: int, runs: int, budget_s: float) -> list[float]:
    """Wall times in seconds of `runs` calls after `warmup` ones; stops early after `budget_s` (at least 3 runs)."""
    inputs = as_inference(inputs)
    with torch.inference_mode():
        for _ in range(warmup):
            forward(*inputs)
        times: list[float] = []
        deadline = time.perf_counter() + budget_s
        while len(times) < runs and (len(times) < 3 or time.perf_counter() < deadline):
            start = time.perf_counter()
            forward(*inputs)
            times.append(time.perf_counter() - start)
    return times


def measure(
    forward: Forward,
    task: Task,
    *,
    size_bytes: int,
    parameters: int,
    threads: int,
    metric: float | None = None,
    budget_s: float = 3.0,
) -> ModelMetrics:
    """Latency p50 at batch 1, throughput at batch 32 and the task metric, at `threads` CPU threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        single = task.sample_inputs(1)
        latency = statistics.median(time_call(forward, single, warmup=3, runs=50, budget_s=budget_s))
        batch = task.sample_inputs(THROUGHPUT_BATCH)
        rows = int(batch[0].shape[0])
        batch_time = statistics.median(time_call(forward, batch, warmup=2, runs=20, budget_s=budget_s))
        score = task.score(forward) if metric is None else metric
    finally:
        torch.set_num_threads(previous)
    return ModelMetrics(
        size_bytes=size_bytes,
        parameters=parameters,
        latency_p50_ms=round(latency * 1000.0, 4),
        throughput=round(rows / batch_time, 2),
        metric=round(score, 6),
        metric_name=task.metric_name,
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
