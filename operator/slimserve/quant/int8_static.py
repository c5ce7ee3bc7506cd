"""int8-static: Conv2d and Linear with int8 weights and activations whose range is calibrated ahead of time.

Activations are uint8 with one (scale, zero point) per tensor, from the min/max seen on calibration
batches; weights are symmetric int8 per output channel (the x86 oneDNN convention: u8 activations, s8
weights, which VNNI multiplies natively). The activations use 7 of their 8 bits (`ACTIVATION_QUANT_MAX`):
on x86 CPUs without VNNI, oneDNN adds u8 x s8 products in pairs in int16 with saturation, so a full 8-bit
grid can overflow there and the compiled model would disagree with the eager one (torch.ao's `reduce_range`
for x86). The grid is the same on every CPU so that an artifact computes the same numbers wherever it is
served; recipes written before it existed carry no `input_quant_max` and keep the full grid.

The forward is written in PT2E's reference representation (`quantized_decomposed` quantize/dequantize
ops around a float conv / linear). Eager, it computes exactly what the integer kernel would, up to float
accumulation order; under `optimize_for_inference` (torch.compile with freezing and torchao's x86 inductor
passes) the dequantize -> conv patterns are lowered to oneDNN's int8 `qconv` / `qlinear`. The module's
state stays plain tensors for safetensors; the python-float copies of the activation scale and zero point
that the ops take are refreshed whenever a state dict is loaded.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
import torchao.quantization.pt2e  # noqa: F401  (registers the quantized_decomposed ops)
from torch import nn

from typing import Any

from slimserve.quant.base import QuantizedModule, ReplacesLinear
from slimserve.quant.conv_geometry import ConvGeometry, ReplacesConv2d
from slimserve.quant.kernels import symmetric_int8_per_row

_ops = torch.ops.quantized_decomposed
UINT8_MIN = 0
ACTIVATION_QUANT_MAX = 127  # 2 * 127 * 127 fits an int16 pair sum; 2 * 255 * 127 does not
LEGACY_QUANT_MAX = 255


class _Int8Static(QuantizedModule):
    def _allocate(self, weight_shape: tuple[int, ...], bias: bool) -> None:
        self.register_buffer("weight_int8", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(weight_shape[0], dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(weight_shape[0], dtype=torch.float32) if bias else None)
        self.register_buffer("input_scale", torch.ones(1, dtype=torch.float32))
        self.register_buffer("input_zero_point", torch.zeros(1, dtype=torch.int32))
        # Symmetric weights: zero points are all 0 and need not be stored.
        self.register_buffer("weight_zero_point", torch.zeros(weight_shape[0], dtype=torch.int64), persistent=False)
        self._input_qparams = (1.0, 0)
        self.input_quant_max = ACTIVATION_QUANT_MAX
        self.register_load_state_dict_post_hook(lambda module, _incompatible: module._refresh_qparams())

    def _fill(self, module: nn.Module, input_qparams: tuple[float, int]) -> None:
        self.weight_int8, self.weight_scale = symmetric_int8_per_row(module.weight)
        if module.bias is not None:
            self.bias = module.bias.detach().float().clone()
        scale, zero_point = input_qparams
        self.input_scale = torch.tensor([scale], dtype=torch.float32)
        self.input_zero_point = torch.tensor([zero_point], dtype=torch.int32)
        self._refresh_qparams()

    def _refresh_qparams(self) -> None:
        self._input_qparams = (float(self.input_scale[0]), int(self.input_zero_point[0]))

    def _dequantized_input(self, x: torch.Tensor) -> torch.Tensor:
        scale, zero_point = self._input_qparams
        quant_max = self.input_quant_max
        x_uint8 = _ops.quantize_per_tensor.default(x, scale, zero_point, UINT8_MIN, quant_max, torch.uint8)
        return _ops.dequantize_per_tensor.default(x_uint8, scale, zero_point, UINT8_MIN, quant_max, torch.uint8)

    def _dequantized_weight(self) -> torch.Tensor:
        return _ops.dequantize_per_channel.default(
            self.weight_int8, self.weight_scale, self.weight_zero_point, 0, -128, 127, torch.int8
        )


class _InputGridSpec:
    """The activation grid's recipe field, around the shape's; listed first so these methods wrap the shape's."""

    input_quant_max: int

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "input_quant_max": self.input_quant_max}

    @classmethod
    def empty(cls, spec: dict[str, Any], where: str = "module"):
        quant_max = spec.get("input_quant_max", LEGACY_QUANT_MAX)
        if isinstance(quant_max, bool) or quant_max not in (ACTIVATION_QUANT_MAX, LEGACY_QUANT_MAX):
            raise ValueError(f"{where}.input_quant_max: expected {ACTIVATION_QUANT_MAX} or {LEGACY_QUANT_MAX}, got {quant_max!r}")
        module = super().empty(spec, where)
        module.input_quant_max = quant_max
        return module


class Int8StaticLinear(_InputGridSpec, ReplacesLinear, _Int8Static):
    kind = "int8-static-linear"

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self._allocate((out_features, in_features), bias)

    @classmethod
    def from_float(cls, linear: nn.Linear, input_qparams: tuple[float, int]) -> "Int8StaticLinear":
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        module._fill(linear, input_qparams)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._dequantized_input(x.float()), self._dequantized_weight(), self.bias)


class Int8StaticConv2d(_InputGridSpec, ReplacesConv2d, _Int8Static):
    kind = "int8-static-conv2d"

    def __init__(self, geometry: ConvGeometry):
        super().__init__()
        self.geometry = geometry
        self._allocate(geometry.weight_shape(), geometry.bias)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, input_qparams: tuple[float, int]) -> "Int8StaticConv2d":
        module = cls(ConvGeometry.of(conv))
        module._fill(conv, input_qparams)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self._dequantized_input(x.float()), self._dequantized_weight(), self.bias, **self.geometry.conv_kwargs())
