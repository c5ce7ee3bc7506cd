"""int4-weight-only: 4-bit weights in groups along the input dimension, float activations, packed-int4 kernels.

Each group of `group_size` input weights of an output row gets an asymmetric uint4 grid (a scale and an
integer zero point, as GPTQ and torchao's int4 do): `w ~= (q - zero) * scale`, q in 0..15. The artifact
stores it in one device-neutral layout (docs/quantization.md):

- `weight_uint4x2`: uint8 [out, in / 2], column 2j of a row in the low nibble of byte j, 2j + 1 in the high;
- `weight_scale`: bf16 [out, in / group_size] (the kernels' own scale precision, so nothing is lost at load);
- `weight_zero`: uint8 [out, in / group_size], the zero point in 0..15;
- `bias`: fp32 [out], when the Linear has one.

Whenever the module lands on a device (built, loaded, `.to()`), the weight is repacked for that device's
kernel (`int4_kernels`) into non-persistent buffers, so the artifact never holds a device's packing and no
call unpacks the weight (on a CPU, calls of many rows use the int8 copy made there: see `int4_kernels`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimserve.quant.base import QuantizedModule, ReplacesLinear, spec_bool, spec_int
from slimserve.quant import int4_kernels
from slimserve.quant.int4_kernels import (
    CPU_INT4_MAX_ROWS,
    KERNEL_GROUP_SIZES,
    int4_matmul,
    kernel_fits,
    many_rows_matmul,
    many_rows_project,
    many_rows_weight,
    pack_weight,
    scales_and_offsets,
    unpack_nibbles,
)
from slimserve.quant.int8_dynamic import gelu_int8_per_token
from slimserve.quant.kernels import MIN_SCALE

UINT4_MAX = 15
SCALE_DTYPE = torch.bfloat16


def group_size_for(in_features: int, out_features: int, largest: int = max(KERNEL_GROUP_SIZES)) -> int | None:
    """The largest kernel group size up to `largest` that fits the layer (None: the layer stays float)."""
    return next((size for size in KERNEL_GROUP_SIZES if size <= largest and kernel_fits(in_features, out_features, size)), None)


def quantize_int4_grouped(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(packed uint8 [N, K/2], scale bf16 [N, K/group], zero uint8 [N, K/group])`, `w ~= (q - zero) * scale`."""
    rows, cols = weight.shape
    groups = weight.detach().float().reshape(rows, cols // group_size, group_size)
    low = groups.amin(dim=2).clamp(max=0.0)
    high = groups.amax(dim=2).clamp(min=0.0)
    # Rounded to bf16 before quantizing, so the values are chosen for the scale the kernels will use.
    scale = ((high - low) / UINT4_MAX).clamp(min=MIN_SCALE).to(SCALE_DTYPE)
    zero = torch.round(-low / scale.float()).clamp(0, UINT4_MAX)
    values = torch.round(groups / scale.float()[..., None] + zero[..., None]).clamp(0, UINT4_MAX).to(torch.uint8)
    values = values.reshape(rows, cols)
    packed = values[:, 0::2] | (values[:, 1::2] << 4)
    return packed, scale, zero.to(torch.uint8)


def dequantize_int4_grouped(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The float weight [N, K] of the neutral layout (the reference the kernels are tested against)."""
    rows = packed.shape[0]
    values = unpack_nibbles(packed).reshape(rows, scale.shape[1], -1)
    weight = (values.float() - zero.float()[..., None]) * scale.float()[..., None]
    return weight.reshape(rows, -1).to(dtype)


def register_neutral_layout(module: nn.Module, rows: int, columns: int, group_size: int) -> None:
    """The layout's buffers (`weight_uint4x2`, `weight_scale`, `weight_zero`) for a [rows, columns] weight."""
    groups = columns // group_size
    module.register_buffer("weight_uint4x2", torch.zeros(rows, columns // 2, dtype=torch.uint8))
    module.register_buffer("weight_scale", torch.ones(rows, groups, dtype=SCALE_DTYPE))
    module.register_buffer("weight_zero", torch.zeros(rows, groups, dtype=torch.uint8))


class Int4WeightOnlyLinear(ReplacesLinear, QuantizedModule):
    kind = "int4-weight-only-linear"

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int):
        super().__init__()
        if not kernel_fits(in_features, out_features, group_size):
            raise ValueError(
                f"group_size {group_size} with in_features {in_features} and out_features {out_features} has no int4 "
                f"kernel: group_size one of {list(KERNEL_GROUP_SIZES)} dividing in_features, in_features a multiple "
                "of 32, out_features a multiple of 16"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        register_neutral_layout(self, out_features, in_features, group_size)
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32) if bias else None)
        # The device's packing: derived, never saved (the artifact stays device-neutral).
        self.register_buffer("kernel_weight", torch.empty(0, dtype=torch.uint8), persistent=False)
        self.register_buffer("kernel_scale_offset", torch.empty(0, dtype=SCALE_DTYPE), persistent=False)
        # CPU only: the copy calls of more than CPU_INT4_MAX_ROWS rows run on (int4_kernels.CPU_MANY_ROWS)
        self.register_buffer("many_rows_weight", torch.empty(0, dtype=torch.int8), persistent=False)
        self.register_buffer("many_rows_scale", torch.empty(0), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _keys: module.pack_for_device())
        self.pack_for_device()

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int) -> "Int4WeightOnlyLinear":
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size)
        module.weight_uint4x2, module.weight_scale, module.weight_zero = quantize_int4_grouped(linear.weight.cpu(), group_size)
        if linear.bias is not None:
            module.bias = linear.bias.detach().float().cpu().clone()
        return module.to(linear.weight.device)  # packs for that device

    def pack_for_device(self) -> None:
        """Repack the neutral weight for the kernel of the device it is on."""
        device = self.weight_uint4x2.device
        if device.type == "meta":
            return
        with torch.no_grad():
            self.kernel_weight = pack_weight(self.weight_uint4x2, device)
            self.kernel_scale_offset = scales_and_offsets(self.weight_scale, self.weight_zero, device)
            path = int4_kernels.CPU_MANY_ROWS if device.type == "cpu" else "int4"
            if path == "int4":  # every call on the int4 kernel
                self.many_rows_weight = self.many_rows_scale = torch.empty(0, device=device)
            else:
                self.many_rows_weight, self.many_rows_scale = many_rows_weight(self.dequantized_weight(), path)

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .cpu(): the packing follows the device
        super()._apply(fn, recurse)
        self.pack_for_device()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.runs_on_copy(rows):
            out = many_rows_matmul(rows, self.many_rows_weight, self.many_rows_scale)
        else:
            out = int4_matmul(rows, self.kernel_weight, self.group_size, self.kernel_scale_offset)
        return self.finish(out, x)

    def runs_on_copy(self, rows: torch.Tensor) -> bool:
        """Whether a call of these rows [M, in] runs on the CPU copy rather than the int4 kernel."""
        return bool(self.many_rows_weight.numel()) and rows.shape[0] > CPU_INT4_MAX_ROWS

    def finish(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The [M, out] product of input `x` reshaped to x's leading dimensions and dtype, plus the bias."""
        out = out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return out if self.bias is None else out + self.bias.to(x.dtype)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_int4_grouped(self.weight_uint4x2, self.weight_scale, self.weight_zero, dtype)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "group_size": self.group_size}

    @classmethod
    def empty(cls, spec: dict[str, Any], where: str = "module") -> "Int4WeightOnlyLinear":
        return cls(
            spec_int(spec, "in_features", where),
            spec_int(spec, "out_features", where),
            spec_bool(spec, "bias", where),
            spec_int(spec, "group_size", where),
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


class GeluInt4Linear(nn.Module):
    """`linear(gelu(x))` for an Int4WeightOnlyLinear: calls on its CPU int8 copy quantize GELU's output in one
    pass with the bound GeluInt8Linear uses; calls on the int4 kernel (or a bf16 copy) apply GELU first.
    Built by inference fusion (MiniLMFeedForward); the artifact keeps the plain Int4WeightOnlyLinear."""

    def __init__(self, linear: Int4WeightOnlyLinear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linear = self.linear
        rows = x.reshape(-1, linear.in_features)
        if not (linear.runs_on_copy(rows) and linear.many_rows_weight.dtype == torch.int8):
            return linear(nn.functional.gelu(x))
        out = many_rows_project(*gelu_int8_per_token(rows.float()), linear.many_rows_weight, linear.many_rows_scale)
        return linear.finish(out, x)
