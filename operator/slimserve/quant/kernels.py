"""Integer quantization math shared by the quantized modules: symmetric int8 scales, per-token activations.

All functions are plain torch ops so that torch.compile (inductor) fuses the activation quantization into
the kernel that produced the activation, and the int32 -> float rescale into the kernel that consumes it.
"""

from __future__ import annotations

import torch
from torchao.utils import _cpu_is_amx_tile_supported, _cpu_is_vnni_supported

INT8_MAX = 127
# Scales never go below this, so an all-zero row (a pruned channel, a padded token) quantizes to zeros.
MIN_SCALE = 1e-8
ROW_BLOCK = 4096  # rows quantized at a time by symmetric_int8_per_row


def symmetric_int8_per_row(weight: torch.Tensor, quant_max: int = INT8_MAX) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize each row of `weight` (output channel / embedding row) to int8 in [-quant_max, quant_max].

    Returns `(int8 values shaped like weight, float32 scale per row)`: `weight ~= values * scale[:, None...]`.
    """
    flat = weight.detach().reshape(weight.shape[0], -1)
    values = torch.empty(flat.shape, dtype=torch.int8, device=flat.device)
    scale = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    # Blocks of rows: the float temporaries stay small however large the table (a vocabulary's embeddings).
    for start in range(0, flat.shape[0], ROW_BLOCK):
        rows = slice(start, start + ROW_BLOCK)
        block = flat[rows].float()
        scale[rows] = (block.abs().amax(dim=1) / quant_max).clamp(min=MIN_SCALE)
        values[rows] = torch.round(block / scale[rows, None]).clamp(-quant_max, quant_max).to(torch.int8)
    return values.reshape(weight.shape), scale


def dequantize_per_row(values: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of `symmetric_int8_per_row` (scale broadcast over every dimension but the first)."""
    return values.to(dtype) * scale.to(dtype).reshape(-1, *([1] * (values.dim() - 1)))


def int8_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric quantization of a 2-D activation, one scale per row (token): `(int8 [M, K], scale [M, 1])`."""
    scale = (x.abs().amax(dim=1, keepdim=True) / INT8_MAX).clamp(min=MIN_SCALE)
    return torch.round(x / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8), scale


def _prefers_unsigned_activations() -> bool:
    """Whether int8 GEMMs should take uint8 activations: on AVX512-VNNI CPUs without AMX, VNNI's dot
    product multiplies unsigned by signed bytes natively, and a signed-by-signed GEMM pays for a conversion."""
    return _cpu_is_vnni_supported() and not _cpu_is_amx_tile_supported()


def _has_int8_gemm() -> bool:
    """Whether this CPU has an int8 dot product for `torch._int_mm` (VNNI or AMX). Without one (an AVX2-only
    x86, for example) oneDNN's int8 GEMM either takes a path many times slower than the float GEMM of the same
    shape or adds u8 x s8 products in pairs in int16 with saturation, wrong for full-range operands
    (docs/performance.md), so int8 products are computed in float32 there instead: exact while a row's sum
    stays within float32's 24-bit integers, and off by a unit or two in the last place beyond."""
    return _cpu_is_vnni_supported() or _cpu_is_amx_tile_supported()


# Read once at import: a plain bool is a constant to torch.compile, where a call to the detection would
# break the graph at every linear layer.
UNSIGNED_ACTIVATIONS = _prefers_unsigned_activations()
INT8_GEMM_ON_CPU = _has_int8_gemm()


def int8_matmul(x_int8: torch.Tensor, weight_int8: torch.Tensor) -> torch.Tensor:
    """`x_int8 [M, K] @ weight_int8[N, K].T` accumulated exactly in int32.

    `torch._int_mm` runs oneDNN's int8 GEMM on x86, and inductor keeps it as an extern kernel, fusing its
    neighbours around it; on a CPU without VNNI or AMX the float32 GEMM does the work instead
    (`int8_matmul_in_float`). On VNNI-without-AMX CPUs the activations are shifted to uint8 (+128, fused
    into the quantizing kernel) and the shift removed afterwards: 128 * each weight row's sum, a constant
    that freezing folds.
    """
    if x_int8.device.type == "cpu" and not INT8_GEMM_ON_CPU:
        return int8_matmul_in_float(x_int8, weight_int8)
    if x_int8.device.type != "cpu" or not UNSIGNED_ACTIVATIONS:
        return torch._int_mm(x_int8, weight_int8.t())
    x_uint8 = (x_int8.to(torch.int32) + 128).to(torch.uint8)
    return torch._int_mm(x_uint8, weight_int8.t()) - 128 * weight_int8.sum(dim=1, dtype=torch.int32)


def int8_matmul_in_float(x_int8: torch.Tensor, weight_int8: torch.Tensor) -> torch.Tensor:
    """`int8_matmul` through the float32 GEMM, for CPUs without an int8 dot product (`INT8_GEMM_ON_CPU`)."""
    return torch.mm(x_int8.float(), weight_int8.float().t()).to(torch.int32)
