"""Perplexity of a decoder on held-out token ids, with a sliding window for texts longer than the context."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from slimserve.models.decoder.model import DecoderLM


def perplexity(model: DecoderLM, token_ids: torch.Tensor | list[int], window: int, stride: int | None = None, batch_size: int = 8) -> float:
    """exp(mean negative log-likelihood) of every token after the first.

    Windows of `window` tokens start every `stride` tokens (default: window // 2); each scores only the
    tokens the previous window did not, so every token is scored once, with at least window - stride
    tokens of context after the first window (stride < window).
    """
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    stride = stride or max(1, window // 2)
    if len(ids) < 2:
        raise ValueError("perplexity: needs at least 2 tokens")
    if not 1 <= stride < window:  # a window's first token has no context in it: the one before scored it
        raise ValueError(f"perplexity: stride must be at least 1 and below the window ({window}), got {stride}")
    spans = []  # (start, first scored target index within the window)
    scored_until = 1  # targets before this index are already scored
    start = 0
    while scored_until < len(ids):
        end = min(start + window, len(ids))
        spans.append((start, end, scored_until - start))
        scored_until = end
        start += stride
        if start + 1 >= len(ids):
            break
    total, count = 0.0, 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for first in range(0, len(spans), batch_size):
            group = spans[first:first + batch_size]
            length = max(end - begin for begin, end, _ in group)
            inputs = torch.zeros(len(group), length, dtype=torch.long)
            for row, (begin, end, _) in enumerate(group):
                inputs[row, : end - begin] = ids[begin:end]
            logits = model(inputs.to(device)).float()
            for row, (begin, end, skip) in enumerate(group):
                targets = ids[begin + skip:end].to(device)  # token t is predicted from position t - 1
                predictions = logits[row, skip - 1:end - begin - 1]
                total += F.cross_entropy(predictions, targets, reduction="sum").item()
                count += len(targets)
    model.train(was_training)
    return math.exp(total / count)
