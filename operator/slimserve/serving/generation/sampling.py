"""The next token of each running sequence from its logits: greedy rows in one argmax, sampled rows each
with its own seeded generator, so a request with a seed gets the same tokens whatever it is batched with."""

from __future__ import annotations

import torch

from slimserve.serving.generation.params import SamplingParams


def new_generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def next_tokens(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]
) -> list[int]:
    """One token per row of `logits` [B, V]."""
    chosen = torch.argmax(logits, dim=-1)
    for row, (wanted, generator) in enumerate(zip(params, generators)):
        if not wanted.greedy:
            chosen[row] = _sample(logits[row].float(), wanted, generator)
    return chosen.tolist()


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    logits = logits / params.temperature
    if 0 < params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the tokens ranked above each
        sorted_probs = sorted_probs.masked_fill(before >= params.top_p, 0.0)  # the first token always stays
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)[0]
