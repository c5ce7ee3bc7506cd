"""int8-weight-only: int8 weights (one scale per output channel), float activations and compute.

On a CPU, calls of up to `CPU_INT8_KERNEL_MAX_ROWS` rows (a decoder's decode step: one row per running
sequence) run on torch's weight-only int8 kernel (`aten._weight_int8pack_mm`, bf16 activations: its fp32
path is a reference loop), which reads the int8 weight as it multiplies; where weight bandwidth bounds the
step that is up to 4x fewer bytes than fp32. Other calls dequantize the weight at use (under
torch.compile with freezing it is folded into a float constant, so compiled speed is that of the float
model). The artifact and the eager model's memory shrink by 4x either way.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from slimserve.quant.base import QuantizedModule, ReplacesLinear
from slimserve.quant.conv_geometry import ConvGeometry, ReplacesConv2d
from slimserve.quant.kernels import dequantize_per_row, symmetric_int8_per_row

# Measured (benchmarks/generation.py --model-size): the kernel beats dequantize-then-matmul up to a few dozen
# rows, and a prefill of many rows is a dense GEMM's job.
CPU_INT8_KERNEL_MAX_ROWS = 32
KERNEL_DTYPE = torch.bfloat16


def int8_weight_only_matmul(x: torch.Tensor, weight_int8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`x [M, K] @ (weight_int8 * scale).T` on the CPU kernel; bf16 [M, N]."""
    return torch.ops.aten._weight_int8pack_mm(x.to(KERNEL_DTYPE).contiguous(), weight_int8, scale.to(KERNEL_DTYPE))


class _Int8Weight(QuantizedModule):
    """Holds `weight_int8`, `weight_scale` (per output channel) and an optional float bias."""

    def _allocate(self, weight_shape: tuple[int, ...], bias: bool) -> None:
        self.register_buffer("weight_int8", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(weight_shape[0], dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(weight_shape[0], dtype=torch.float32) if bias else None)

    def _fill(self, module: nn.Module) -> None:
        self.weight_int8, self.weight_scale = symmetric_int8_per_row(module.weight)
        if module.bias is not None:
            self.bias = module.bias.detach().float().clone()

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_per_row(self.weight_int8, self.weight_scale, dtype)

    def _bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.to(dtype)


class Int8WeightOnlyLinear(ReplacesLinear, _Int8Weight):
    kind = "int8-weight-only-linear"

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self._allocate((out_features, in_features), bias)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "Int8WeightOnlyLinear":
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        module._fill(linear)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if x.device.type != "cpu" or rows.shape[0] > CPU_INT8_KERNEL_MAX_ROWS:
            return F.linear(x, self.weight(x.dtype), self._bias(x.dtype))
        out = int8_weight_only_matmul(rows, self.weight_int8, self.weight_scale)
        out = out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return out if self.bias is None else out + self.bias.to(x.dtype)


class Int8WeightOnlyConv2d(ReplacesConv2d, _Int8Weight):
    kind = "int8-weight-only-conv2d"

    def __init__(self, geometry: ConvGeometry):
        super().__init__()
        self.geometry = geometry
        self._allocate(geometry.weight_shape(), geometry.bias)

    @classmethod
    def from_float(cls, conv: nn.Conv2d) -> "Int8WeightOnlyConv2d":
        module = cls(ConvGeometry.of(conv))
        module._fill(conv)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(x.dtype), self._bias(x.dtype), **self.geometry.conv_kwargs())
