"""GPTQ (Frantar et al., 2022): weight-only quantization that compensates each column's rounding error.

Round-to-nearest rounds every weight on its own. GPTQ quantizes a Linear's input columns one at a time and
spreads each column's rounding error over the columns not yet quantized, weighted by the inverse Hessian of
the layer's squared output error, `H = X^T X` of its calibration inputs X: the layer's outputs on that data
stay closer to the float layer's than rounding alone keeps them. The grid is the runtime's own (asymmetric
uint4 per group with a bf16 scale as `quant.int4_weight_only`; symmetric int8 per row as
`quant.int8_weight_only`), so the modules built here are the ones round-to-nearest builds, with other codes.

Every layer's Hessian is collected from the float model in one pass over the calibration batches (the
layers' float inputs, not the partly quantized model's): one pass, whatever the depth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from slimserve.quant.int4_weight_only import Int4WeightOnlyLinear, quantize_int4_grouped
from slimserve.quant.int8_weight_only import Int8WeightOnlyLinear
from slimserve.quant.kernels import INT8_MAX, symmetric_int8_per_row

DAMPING = 0.01  # of the Hessian's mean diagonal, added to its diagonal: keeps the inverse well conditioned
BLOCK = 128  # columns updated together before the error is carried to the rest (the paper's lazy batching)


def collect_hessians(model: nn.Module, names: list[str], batches: list[tuple]) -> dict[str, torch.Tensor]:
    """`X^T X / rows` of each named Linear's inputs over the calibration batches (float64, on the CPU)."""
    modules = dict(model.named_modules())
    sums = {name: torch.zeros(modules[name].in_features, modules[name].in_features, dtype=torch.float64) for name in names}
    rows = dict.fromkeys(names, 0)

    def observe(name: str, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).to("cpu", torch.float64)
        sums[name] += flat.T @ flat
        rows[name] += flat.shape[0]

    handles = [modules[name].register_forward_pre_hook(lambda _m, args, n=name: observe(n, args[0])) for name in names]
    try:
        with torch.inference_mode():
            for batch in batches:
                model(*batch)
    finally:
        for handle in handles:
            handle.remove()
    unreached = [name for name in names if rows[name] == 0]
    if unreached:
        raise ValueError(f"calibration: the batches never reached {unreached[0]!r}; cannot calibrate it")
    return {name: sums[name] / rows[name] for name in names}


@dataclass(frozen=True)
class Grid:
    """How a block of columns gets its scale and zero point, and how one column is rounded on them."""

    group_size: int | None  # columns sharing a scale; None: one scale per row for the whole row
    params: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # weights [rows, g] -> (scale, zero) [rows]
    low: int
    high: int

    def codes(self, column: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        return torch.round(column / scale + zero).clamp(self.low, self.high)


def _int4_params(group_size: int) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    def params(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, scale, zero = quantize_int4_grouped(weights, group_size)  # the runtime's rule, bf16 scale included
        return scale.float()[:, 0], zero.float()[:, 0]

    return params


def _int8_params(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _, scale = symmetric_int8_per_row(weights)
    return scale, torch.zeros_like(scale)


def int4_grid(group_size: int) -> Grid:
    return Grid(group_size, _int4_params(group_size), 0, 15)


INT8_GRID = Grid(None, _int8_params, -INT8_MAX, INT8_MAX)


def gptq_codes(weight: torch.Tensor, hessian: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(codes [rows, cols], scale [rows, groups], zero [rows, groups])` of `weight` on `grid`, with GPTQ's
    error compensation under `hessian` [cols, cols]."""
    weights = weight.detach().to("cpu", torch.float32).clone()
    rows, cols = weights.shape
    h = hessian.to(torch.float64).clone()
    dead = torch.diagonal(h) == 0  # inputs that are always zero: their weights are free, set to zero
    h[dead, dead] = 1.0
    weights[:, dead] = 0.0
    h += DAMPING * torch.diagonal(h).mean() * torch.eye(cols, dtype=torch.float64)
    # The upper Cholesky factor of H^-1: row i holds the error weights of column i onto the columns after it.
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).to(torch.float32)

    codes = torch.zeros(rows, cols)
    scales, zeros = [], []
    if grid.group_size is None:
        scale, zero = grid.params(weights)
        scales.append(scale)
        zeros.append(zero)
    block_size = max(BLOCK, grid.group_size or 0)  # a multiple of every group size: groups never straddle blocks
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block = weights[:, start:end].clone()
        errors = torch.zeros_like(block)
        block_inverse = inverse[start:end, start:end]
        for i in range(end - start):
            if grid.group_size is not None and (start + i) % grid.group_size == 0:
                # The group's grid is fitted to its weights as they are now, after the earlier columns' errors.
                scale, zero = grid.params(block[:, i : i + grid.group_size])
                scales.append(scale)
                zeros.append(zero)
            column = block[:, i]
            code = grid.codes(column, scale, zero)
            codes[:, start + i] = code
            error = (column - (code - zero) * scale) / block_inverse[i, i]
            block[:, i:] -= error[:, None] * block_inverse[i, i:][None, :]
            errors[:, i] = error
        weights[:, end:] -= errors @ inverse[start:end, end:]
    return codes, torch.stack(scales, dim=1), torch.stack(zeros, dim=1)


def gptq_int4_linear(linear: nn.Linear, hessian: torch.Tensor, group_size: int) -> Int4WeightOnlyLinear:
    """`Int4WeightOnlyLinear.from_float(linear, group_size)` with GPTQ's codes instead of rounded ones."""
    codes, scale, zero = gptq_codes(linear.weight, hessian, int4_grid(group_size))
    values = codes.to(torch.uint8)
    module = Int4WeightOnlyLinear(linear.in_features, linear.out_features, linear.bias is not None, group_size)
    module.weight_uint4x2 = values[:, 0::2] | (values[:, 1::2] << 4)
    module.weight_scale = scale.to(module.weight_scale.dtype)
    module.weight_zero = zero.to(torch.uint8)
    if linear.bias is not None:
        module.bias = linear.bias.detach().float().cpu().clone()
    return module.to(linear.weight.device)  # packs for that device


def gptq_int8_linear(linear: nn.Linear, hessian: torch.Tensor, kind: type[nn.Module] = Int8WeightOnlyLinear) -> nn.Module:
    """An int8-per-row Linear (`Int8WeightOnlyLinear`, or `Int8DynamicLinear`: the same weight layout) with
    GPTQ's codes."""
    codes, scale, _ = gptq_codes(linear.weight, hessian, INT8_GRID)
    module = kind(linear.in_features, linear.out_features, linear.bias is not None)
    module.weight_int8 = codes.to(torch.int8)
    module.weight_scale = scale[:, 0].float()
    if linear.bias is not None:
        module.bias = linear.bias.detach().float().cpu().clone()
    return module.to(linear.weight.device)
