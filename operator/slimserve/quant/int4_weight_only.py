"""int4-weight-only: 4-bit weights in groups along the input dimension, float activations; CUDA only.

Each group of `group_size` input weights of an output row gets an asymmetric uint4 grid (scale and zero
point, as GPTQ / torchao's int4 do); two 4-bit values are packed per byte, so the artifact and the GPU
memory hold half a byte per weight. The weight is unpacked and dequantized at use, then a float matmul runs
in the activation's dtype.

CPU kernels for int4 are missing or slower than float, which is why the CRD only allows this method on a
GPU node pool; `require_cuda` gives the matching error when it is asked for on a CPU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimserve.quant.base import QuantizedModule, spec_bool, spec_int
from slimserve.quant.kernels import MIN_SCALE

UINT4_MAX = 15
GROUP_SIZES = (128, 64, 32)


class BackendUnsupportedError(NotImplementedError):
    """The method has no kernels on this device."""


def require_cuda(device: torch.device, what: str) -> None:
    if device.type != "cuda":
        raise BackendUnsupportedError(
            f"int4-weight-only needs a CUDA device ({what} is on {device.type}): its CPU kernels are missing or "
            "slower than float; use int8-dynamic on CPU, or run this step on a GPU node pool"
        )


def group_size_for(in_features: int) -> int | None:
    """The largest supported group size dividing `in_features` (None: the layer stays float)."""
    return next((size for size in GROUP_SIZES if in_features % size == 0), None)


def quantize_int4_grouped(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(packed uint8 [N, K/2], scale [N, K/group], zero [N, K/group])` with `w ~= (q - zero) * scale`."""
    rows, cols = weight.shape
    groups = weight.detach().float().reshape(rows, cols // group_size, group_size)
    low = groups.amin(dim=2).clamp(max=0.0)
    high = groups.amax(dim=2).clamp(min=0.0)
    scale = ((high - low) / UINT4_MAX).clamp(min=MIN_SCALE)
    zero = torch.round(-low / scale).clamp(0, UINT4_MAX)
    values = torch.round(groups / scale[..., None] + zero[..., None]).clamp(0, UINT4_MAX).to(torch.uint8)
    values = values.reshape(rows, cols)
    packed = values[:, 0::2] | (values[:, 1::2] << 4)
    return packed, scale, zero


def dequantize_int4_grouped(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    rows = packed.shape[0]
    values = torch.stack((packed & 0x0F, packed >> 4), dim=-1).reshape(rows, scale.shape[1], -1)
    weight = (values.to(dtype) - zero.to(dtype)[..., None]) * scale.to(dtype)[..., None]
    return weight.reshape(rows, -1)


class Int4WeightOnlyLinear(QuantizedModule):
    kind = "int4-weight-only-linear"

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int):
        super().__init__()
        if in_features % group_size or group_size % 2:
            raise ValueError(f"group_size {group_size} must be even and divide in_features {in_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        groups = in_features // group_size
        self.register_buffer("weight_uint4x2", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(out_features, groups, dtype=torch.float32))
        self.register_buffer("weight_zero", torch.zeros(out_features, groups, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int) -> "Int4WeightOnlyLinear":
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size).to(linear.weight.device)
        module.weight_uint4x2, module.weight_scale, module.weight_zero = quantize_int4_grouped(linear.weight, group_size)
        if linear.bias is not None:
            module.bias = linear.bias.detach().float().clone()
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = dequantize_int4_grouped(self.weight_uint4x2, self.weight_scale, self.weight_zero, x.dtype)
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def spec(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "group_size": self.group_size,
        }

    @classmethod
    def empty(cls, spec: dict[str, Any], where: str = "module") -> "Int4WeightOnlyLinear":
        return cls(
            spec_int(spec, "in_features", where),
            spec_int(spec, "out_features", where),
            spec_bool(spec, "bias", where),
            spec_int(spec, "group_size", where),
        )

    def float_shape_matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear) and (module.in_features, module.out_features) == (self.in_features, self.out_features)
