"""Decoders' generation speed: tokens per second of one sequence (concurrency 1), greedy, with the KV cache.

Measured side by side as every speed figure is (`measure.interleaved_rounds`): the models take turns, round
after round, and each figure is the median of its rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

from slimserve.compression.measure import MAX_ROUNDS, interleaved_rounds, round_plan, time_call
from slimserve.models.device import model_device
from slimserve.models.torch_threads import torch_threads

NEW_TOKENS = 32


def greedy_generation(model: nn.Module, prompt: torch.Tensor, new_tokens: int = NEW_TOKENS):
    """A call generating `new_tokens` after `prompt` [T] (prefill, then one decode step per token)."""
    device = model_device(model)
    prompt = prompt.to(device)
    cache = model.new_cache(1, len(prompt) + new_tokens)
    slots = torch.zeros(1, dtype=torch.long, device=device)

    def generate() -> None:
        token = model.prefill(prompt, 0, cache).argmax()[None]
        for step in range(new_tokens - 1):
            position = torch.full((1,), len(prompt) + step, dtype=torch.long, device=device)
            token = model.decode(token, slots, position, cache).argmax(dim=-1)

    return generate


def tokens_per_second(
    models: Sequence[nn.Module], prompt: torch.Tensor, *, threads: int, budget_s: float = 3.0, new_tokens: int = NEW_TOKENS
) -> list[float]:
    """Median tokens per second of each model generating `new_tokens` after `prompt`, in interleaved rounds."""
    with torch_threads(threads):
        calls = [greedy_generation(model, prompt, new_tokens) for model in models]
        forwards = [lambda *_inputs, call=call: call() for call in calls]
        with torch.inference_mode():
            # warm-up: allocations and first-call work stay out of the rounds; the slowest call sizes them
            call_s = max(time_call(forward, (), runs=1)[0] for forward in forwards)
            plan = round_plan(call_s, 1)
            rounds = interleaved_rounds(
                forwards, (), calls=plan.calls, min_rounds=plan.min_rounds,
                max_rounds=MAX_ROUNDS, budget_s=budget_s * len(models), clock=time.perf_counter,
            )
    return [round(new_tokens / statistics.median(times), 2) for times in rounds]
