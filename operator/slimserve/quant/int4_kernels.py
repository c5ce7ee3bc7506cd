"""Packed-int4 matmuls: torch's tinygemm kernels for CPU and CUDA, fed from the artifact's neutral layout.

The artifact stores each int4 weight in one layout whatever the device (`int4_weight_only`: two nibbles per
byte, scale and zero point per group). Each device's kernel wants its own packing, made here once when the
module lands on the device:

- CPU: `aten._convert_weight_to_int4pack_for_cpu(int32 [N, K], 1)` -> `aten._weight_int4pack_mm_for_cpu`;
- CUDA: `aten._convert_weight_to_int4pack(uint8 [N, K/2], inner_k_tiles)`, high nibble first ->
  `aten._weight_int4pack_mm`.

Both take bf16 activations and a bf16 `[K/group, N, 2]` table of (scale, offset) where a weight is
`(q - 8) * scale + offset`: with our zero point, `offset = (8 - zero) * scale`. Their fp32 CPU path is a
reference loop (hundreds of times slower), so activations go through bf16 on every device.

The CPU kernel is a matrix-vector kernel: it beats a dense GEMM only up to a few rows (tokens x batch),
and an encoder's call has more. So on the CPU the module also keeps a copy of its weight for calls of more
than `CPU_INT4_MAX_ROWS` rows (`CPU_MANY_ROWS`): by default requantized to int8 per output channel and run
as int8-dynamic runs (per-token int8 activations, oneDNN's VNNI GEMM), the fastest of the paths measured
(benchmarks/int4_cpu_paths.py, docs/quantization.md); the artifact stays int4. On CUDA every call runs the
int4 kernel.
"""

from __future__ import annotations

import torch

import torch.nn.functional as F

from slimserve.quant.base import BackendUnsupportedError
from slimserve.quant.kernels import UNSIGNED_ACTIVATIONS, int8_matmul, int8_per_token, symmetric_int8_per_row

KERNEL_GROUP_SIZES = (256, 128, 64, 32)  # the group sizes both kernels accept
TINYGEMM_MIDPOINT = 8
KERNEL_DTYPE = torch.bfloat16
# Output rows: the CPU packing works on blocks of 16 output channels, CUDA's tiles on 8.
OUT_FEATURES_MULTIPLE = 16
# Input columns: CUDA packs K in tiles of 16 * inner_k_tiles (2 at least).
IN_FEATURES_MULTIPLE = 32


# Measured (2-core AVX512-BF16 CPU, MiniLM shapes): the int4 kernel is faster than bf16 dense at 1-4 rows,
# slower from 8 (2x at 64). docs/quantization.md has the table.
CPU_INT4_MAX_ROWS = 4
# What a CPU module keeps for calls of more rows: "int8" (requantized per channel), "bf16" (expanded) or
# "int4" (none: the int4 kernel for every call). benchmarks/int4_cpu_paths.py measures the three.
MANY_ROWS_PATHS = ("int8", "bf16", "int4")
CPU_MANY_ROWS = "int8"


def kernel_fits(in_features: int, out_features: int, group_size: int) -> bool:
    """Whether a [out, in] weight in groups of `group_size` runs on both devices' kernels."""
    return (
        group_size in KERNEL_GROUP_SIZES
        and in_features % group_size == 0
        and in_features % IN_FEATURES_MULTIPLE == 0
        and out_features % OUT_FEATURES_MULTIPLE == 0
    )


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] (column 2j in the low nibble of byte j, 2j+1 in the high one) -> uint8 [N, K] in 0..15."""
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).reshape(packed.shape[0], -1)


def pack_weight(packed: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The neutral uint8 [N, K/2] weight in the packing of `device`'s kernel, on that device."""
    if device.type == "cpu":
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_nibbles(packed.cpu()).to(torch.int32), 1)
    if device.type == "cuda":
        values = unpack_nibbles(packed.to(device))
        high_first = (values[:, 0::2] << 4 | values[:, 1::2]).contiguous()
        return torch.ops.aten._convert_weight_to_int4pack(high_first, inner_k_tiles(values.shape[1]))
    raise BackendUnsupportedError(f"int4-weight-only has kernels for cpu and cuda, not for {device.type}")


def inner_k_tiles(in_features: int) -> int:
    """The most K tiles per CUDA warp that divide the input width (8 is fastest, torchao's default)."""
    return next(tiles for tiles in (8, 4, 2) if in_features % (16 * tiles) == 0)


def scales_and_offsets(scale: torch.Tensor, zero: torch.Tensor, device: torch.device) -> torch.Tensor:
    """bf16 [K/group, N, 2]: tinygemm's (scale, offset) per group from our [N, K/group] scale and zero point."""
    scale = scale.to(device, torch.float32)
    offset = (TINYGEMM_MIDPOINT - zero.to(device, torch.float32)) * scale
    return torch.stack((scale, offset), dim=-1).transpose(0, 1).contiguous().to(KERNEL_DTYPE)


def int4_matmul(x: torch.Tensor, weight: torch.Tensor, group_size: int, scale_offset: torch.Tensor) -> torch.Tensor:
    """`x [M, K] @ W.T` for a weight packed by `pack_weight` on x's device; bf16 [M, N]."""
    x = x.to(KERNEL_DTYPE).contiguous()
    if x.device.type == "cuda":
        return torch.ops.aten._weight_int4pack_mm(x, weight, group_size, scale_offset)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, weight, group_size, scale_offset)


def many_rows_weight(weight: torch.Tensor, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`(weight, per-channel scale)` that `many_rows_matmul` runs on, from the dequantized fp32 weight [N, K]:
    int8 per output channel, or bf16 with an empty scale."""
    if path == "int8":
        return symmetric_int8_per_row(weight)
    if path == "bf16":
        return weight.to(KERNEL_DTYPE), torch.empty(0, device=weight.device)
    raise ValueError(f"CPU_MANY_ROWS: expected int8 or bf16 for a copy, got {path!r}")


def many_rows_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`x [M, K] @ W.T` on a `many_rows_weight` copy: int8-dynamic's math (fp32 out) or a bf16 GEMM (bf16 out)."""
    if weight.dtype != torch.int8:
        return F.linear(x.to(KERNEL_DTYPE), weight)
    return many_rows_project(*int8_per_token(x.float()), weight, scale)


def many_rows_project(x_int8: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 [M, N] of already-quantized inputs (int8 [M, K], scale [M, 1]) on an int8 `many_rows_weight` copy."""
    accumulated = int8_matmul(x_int8, weight).float()
    # The same rescale as Int8DynamicLinear.project, so inductor's x86 pattern prepacks the weight for oneDNN.
    return accumulated * x_scale * scale if UNSIGNED_ACTIVATIONS else accumulated * (x_scale * scale)
