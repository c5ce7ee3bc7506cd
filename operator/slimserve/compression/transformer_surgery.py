"""Physical surgery on the MiniLM / BERT encoder: remove attention heads and FFN neurons, drop layers.

The modules are replaced by smaller ones (weights sliced, not masked), so the result is really smaller
and faster, and its recipe (per-layer head counts and FFN widths) rebuilds it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

HeadScores = list[torch.Tensor]  # per layer: [num_heads]
NeuronScores = list[torch.Tensor]  # per layer: [intermediate_size]


def slice_linear(linear: nn.Linear, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear keeping the given output rows and / or input columns."""
    weight = linear.weight.detach()
    bias = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if cols is not None:
        weight = weight[:, cols]
    smaller = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        smaller.weight.copy_(weight)
        if bias is not None:
            smaller.bias.copy_(bias)
    return smaller


def head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def keep_heads(attention: nn.Module, heads: torch.Tensor) -> None:
    heads = heads.sort().values
    rows = head_rows(heads, attention.head_dim)
    attention.query = slice_linear(attention.query, rows=rows)
    attention.key = slice_linear(attention.key, rows=rows)
    attention.value = slice_linear(attention.value, rows=rows)
    attention.output = slice_linear(attention.output, cols=rows)
    attention.num_heads = len(heads)


def keep_neurons(ffn: nn.Module, neurons: torch.Tensor) -> None:
    neurons = neurons.sort().values
    ffn.intermediate = slice_linear(ffn.intermediate, rows=neurons)
    ffn.output = slice_linear(ffn.output, cols=neurons)


def magnitude_scores(model: nn.Module) -> tuple[HeadScores, NeuronScores]:
    """Squared L2 norm of each head's Q/K/V rows and output columns; of each neuron's in-row and out-column."""
    return _scores(model, lambda weight: weight.detach() ** 2)


def taylor_scores(model: nn.Module) -> tuple[HeadScores, NeuronScores]:
    """First-order Taylor: |weight * gradient|, summed per head / neuron (gradients must be accumulated first)."""
    for parameter in model.parameters():
        if parameter.grad is None:
            raise ValueError("taylor importance needs gradients: run a backward pass first")
    return _scores(model, lambda weight: (weight.detach() * weight.grad).abs())


def _scores(model: nn.Module, elementwise: Callable[[torch.Tensor], torch.Tensor]) -> tuple[HeadScores, NeuronScores]:
    heads, neurons = [], []
    for layer in model.layers:
        attention, ffn = layer.attention, layer.ffn
        d = attention.head_dim
        per_row = sum(elementwise(m.weight).sum(dim=1) for m in (attention.query, attention.key, attention.value))
        per_col = elementwise(attention.output.weight).sum(dim=0)
        heads.append((per_row + per_col).reshape(attention.num_heads, d).sum(dim=1))
        neurons.append(elementwise(ffn.intermediate.weight).sum(dim=1) + elementwise(ffn.output.weight).sum(dim=0))
    return heads, neurons


def top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    return torch.topk(scores, max(1, min(keep, len(scores)))).indices


def prune_encoder(
    model: nn.Module,
    amount: float,
    scores: tuple[HeadScores, NeuronScores],
    kept: Callable[[str], bool],
) -> None:
    """Remove `amount` of the heads and FFN neurons of every layer (at least one of each stays)."""
    head_scores, neuron_scores = scores
    for index, layer in enumerate(model.layers):
        if not kept(f"layers.{index}.attention"):
            count = layer.attention.num_heads
            keep_heads(layer.attention, top(head_scores[index], round(count * (1.0 - amount))))
        if not kept(f"layers.{index}.ffn"):
            width = layer.ffn.intermediate.out_features
            keep_neurons(layer.ffn, top(neuron_scores[index], round(width * (1.0 - amount))))


def select_layers(model: nn.Module, indices: list[int]) -> None:
    """Keep only the given transformer layers, in order."""
    model.layers = nn.ModuleList(model.layers[i] for i in indices)


def evenly_spaced(total: int, keep: int) -> list[int]:
    """`keep` layer indices spread over `total`, first and last included (they matter most for the output)."""
    if keep >= total:
        return list(range(total))
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})
