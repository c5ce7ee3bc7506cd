"""Physical surgery on a `DecoderLM`: remove attention heads (whole grouped-query groups), MLP neurons, layers.

Modules are replaced by smaller ones (weights sliced, not masked) and the model's `DecoderConfig` records the
new sizes, so the artifact's recipe rebuilds the same model and the server's KV cache gets the new head count.
The config holds one head count and one MLP width for all layers, so every layer keeps the same number of
each; which ones it keeps is its own choice.

Grouped-query attention shares each key/value head among `num_heads / num_kv_heads` query heads: a head is
removed with its whole group (its key/value head and every query head reading it), so the sharing stays
intact and the key/value cache shrinks with the queries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from slimserve.compression.transformer_surgery import head_rows, select_layers, slice_linear, top

MLP_MULTIPLE = 32  # kept MLP widths are multiples of this where possible: the int4 kernels need it of in_features

Elementwise = Callable[[torch.Tensor], torch.Tensor]


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """Squared weights: a structure's importance is the squared L2 norm of the weights it owns."""
    return weight.detach() ** 2


def taylor(weight: torch.Tensor) -> torch.Tensor:
    """|weight * gradient|: first-order Taylor estimate of the loss change (gradients accumulated first)."""
    if weight.grad is None:
        raise ValueError("taylor importance needs gradients: run a backward pass first")
    return (weight.detach() * weight.grad).abs()


def group_scores(model: nn.Module, elementwise: Elementwise) -> list[torch.Tensor]:
    """Per layer, [num_kv_heads]: the score of each key/value group (its q, k, v rows and o columns)."""
    scores = []
    for layer in model.layers:
        attention = layer.self_attn
        d, kv, heads = attention.head_dim, attention.num_kv_heads, attention.num_heads
        per_query_head = (elementwise(attention.q_proj.weight).sum(dim=1) + elementwise(attention.o_proj.weight).sum(dim=0))
        per_kv_head = elementwise(attention.k_proj.weight).sum(dim=1) + elementwise(attention.v_proj.weight).sum(dim=1)
        scores.append(per_query_head.reshape(kv, heads // kv * d).sum(dim=1) + per_kv_head.reshape(kv, d).sum(dim=1))
    return scores


def neuron_scores(model: nn.Module, elementwise: Elementwise) -> list[torch.Tensor]:
    """Per layer, [intermediate_size]: each MLP neuron's gate and up rows and down column."""
    scores = []
    for layer in model.layers:
        mlp = layer.mlp
        rows = [m for m in (mlp.gate_proj, mlp.up_proj) if m is not None]
        scores.append(sum(elementwise(m.weight).sum(dim=1) for m in rows) + elementwise(mlp.down_proj.weight).sum(dim=0))
    return scores


def keep_groups(attention: nn.Module, groups: torch.Tensor) -> None:
    """Keep the given key/value groups (and their query heads) of one attention module."""
    groups = groups.sort().values.cpu()
    per_group = attention.num_heads // attention.num_kv_heads
    query_heads = (groups[:, None] * per_group + torch.arange(per_group)[None, :]).reshape(-1)
    query_rows, kv_rows = head_rows(query_heads, attention.head_dim), head_rows(groups, attention.head_dim)
    attention.q_proj = slice_linear(attention.q_proj, rows=query_rows)
    attention.k_proj = slice_linear(attention.k_proj, rows=kv_rows)
    attention.v_proj = slice_linear(attention.v_proj, rows=kv_rows)
    attention.o_proj = slice_linear(attention.o_proj, cols=query_rows)
    attention.num_heads, attention.num_kv_heads = len(query_heads), len(groups)


def keep_neurons(mlp: nn.Module, neurons: torch.Tensor) -> None:
    neurons = neurons.sort().values.cpu()
    if mlp.gate_proj is not None:
        mlp.gate_proj = slice_linear(mlp.gate_proj, rows=neurons)
    mlp.up_proj = slice_linear(mlp.up_proj, rows=neurons)
    mlp.down_proj = slice_linear(mlp.down_proj, cols=neurons)


def kept_width(width: int, amount: float) -> int:
    """The MLP width left after removing `amount` of `width`: rounded to the kernels' multiple when that is
    possible, at least one neuron."""
    keep = width * (1.0 - amount)
    if width >= 2 * MLP_MULTIPLE:
        return max(MLP_MULTIPLE, int(round(keep / MLP_MULTIPLE)) * MLP_MULTIPLE)
    return max(1, round(keep))


def prune_width(model: nn.Module, amount: float, elementwise: Elementwise, parts: Iterable[str] = ("heads", "mlp")) -> None:
    """Remove `amount` of the key/value groups and / or MLP neurons of every layer (at least one of each stays)."""
    config = model.config
    parts = set(parts)
    if "heads" in parts:
        scores = group_scores(model, elementwise)
        keep = max(1, round(config.num_kv_heads * (1.0 - amount)))
        per_group = config.num_heads // config.num_kv_heads
        for layer, score in zip(model.layers, scores):
            keep_groups(layer.self_attn, top(score, keep))
        config.num_kv_heads, config.num_heads = keep, keep * per_group
    if "mlp" in parts:
        scores = neuron_scores(model, elementwise)
        keep = kept_width(config.intermediate_size, amount)
        for layer, score in zip(model.layers, scores):
            keep_neurons(layer.mlp, top(score, keep))
        config.intermediate_size = keep


def block_influence(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """[num_layers]: how much each layer changes the hidden state it is given, 1 - cos(input, output) averaged
    over tokens (ShortGPT's block influence): the layers that change it least matter least."""
    points = [layer.input_layernorm for layer in model.layers] + [model.norm]  # each sees the hidden state before it
    seen: list[torch.Tensor] = []
    handles = [point.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach())) for point in points]
    totals, count = torch.zeros(len(model.layers)), 0
    try:
        with torch.inference_mode():
            for batch in batches:
                seen.clear()
                model(*batch)
                for index in range(len(model.layers)):
                    cosine = torch.nn.functional.cosine_similarity(seen[index].float(), seen[index + 1].float(), dim=-1)
                    totals[index] += float((1.0 - cosine).sum())
                count += seen[0].shape[0] * seen[0].shape[1]
    finally:
        for handle in handles:
            handle.remove()
    if count == 0:
        raise ValueError("block influence needs at least one batch of token ids")
    return totals / count


def prune_depth(model: nn.Module, amount: float, influence: torch.Tensor) -> list[int]:
    """Remove `amount` of the layers, those of least influence (at least one stays); the removed indices."""
    total = len(model.layers)
    keep = max(1, round(total * (1.0 - amount)))
    kept = sorted(top(influence, keep).tolist())
    select_layers(model, kept)
    model.config.num_layers = keep
    return [index for index in range(total) if index not in kept]
