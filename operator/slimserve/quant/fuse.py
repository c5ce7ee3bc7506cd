"""Inference-time fusion: sibling projections of one input become a single wider GEMM.

Attention's query, key and value read the same hidden states: one [K, 3N] int8 GEMM instead of three
[K, N] ones quantizes the input once, runs one (better-shaped) kernel and one parallel region instead of
three. The result is identical: each output channel keeps its own weights and scale, and the per-token
activation scales are the same for all three (int4: one packed matmul, each channel keeping its groups).
Used by `optimize_for_inference` on its own copy of the model (through each module's `fuse_for_inference()`
hook); artifacts keep the separate modules.
"""

from __future__ import annotations

import torch
from torch import nn

from slimserve.quant.int4_weight_only import Int4WeightOnlyLinear
from slimserve.quant.int8_dynamic import Int8DynamicLinear


def concat_output_channels(linears: list[nn.Module]) -> nn.Module | None:
    """One module computing `torch.cat([m(x) for m in linears], -1)`, or None when they cannot be fused."""
    first = linears[0]
    same_inputs = all(m.in_features == first.in_features for m in linears)
    all_bias = all(m.bias is not None for m in linears) or all(m.bias is None for m in linears)
    if not same_inputs or not all_bias:
        return None
    out_features = sum(m.out_features for m in linears)
    has_bias = first.bias is not None
    with torch.no_grad():
        if all(type(m) is nn.Linear for m in linears):
            fused = nn.Linear(first.in_features, out_features, bias=has_bias)
            fused.weight.copy_(torch.cat([m.weight for m in linears]))
            if has_bias:
                fused.bias.copy_(torch.cat([m.bias for m in linears]))
            return fused.to(first.weight.device, first.weight.dtype)
        if all(type(m) is Int8DynamicLinear for m in linears):
            fused = Int8DynamicLinear(first.in_features, out_features, has_bias)
            fused.weight_int8 = torch.cat([m.weight_int8 for m in linears])
            fused.weight_scale = torch.cat([m.weight_scale for m in linears])
            if has_bias:
                fused.bias = torch.cat([m.bias for m in linears])
            return fused
        if all(type(m) is Int4WeightOnlyLinear and m.group_size == first.group_size for m in linears):
            fused = Int4WeightOnlyLinear(first.in_features, out_features, has_bias, first.group_size)
            for name in ("weight_uint4x2", "weight_scale", "weight_zero", *(("bias",) if has_bias else ())):
                setattr(fused, name, torch.cat([getattr(m, name) for m in linears]))
            return fused.to(first.weight_uint4x2.device)  # packs the fused weight for that device
    return None


def apply_inference_fusions(model: nn.Module) -> None:
    """Call every submodule's `fuse_for_inference()` hook (models opt in; see MiniLMAttention)."""
    for module in list(model.modules()):
        hook = getattr(module, "fuse_for_inference", None)
        if callable(hook):
            hook()
