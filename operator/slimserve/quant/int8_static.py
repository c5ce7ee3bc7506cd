"""int8-static: Conv2d and Linear with int8 weights and activations whose range is calibrated ahead of time.

Activations are uint8 with one (scale, zero point) per tensor, from the min/max seen on calibration batches;
weights are symmetric int8 per output channel (the x86 oneDNN convention: u8 activations, s8 weights, which
VNNI multiplies natively). The weights use 7 bits (`WEIGHT_QUANT_MAX`): on x86 CPUs without VNNI, oneDNN adds
u8 x s8 products in pairs in int16 with saturation, and 2 x 255 x 63 fits where 2 x 255 x 127 does not, so the
compiled model agrees with the eager one there too (oneDNN's guide, "Nuances of int8 computations", describes
the overflow; a 7-bit activation grid instead cost the pruned digits CNN more accuracy). The weights are the
same on every CPU, so an artifact computes the same numbers wherever it is served; nothing in the recipe
changes, and artifacts written with full 8-bit weights still load (and can saturate on such CPUs).

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

from slimserve.quant.base import QuantizedModule, ReplacesLinear
from slimserve.quant.conv_geometry import ConvGeometry, ReplacesConv2d
from slimserve.quant.kernels import symmetric_int8_per_row

_ops = torch.ops.quantized_decomposed
UINT8_MIN, UINT8_MAX = 0, 255
WEIGHT_QUANT_MAX = 63  # 2 * 255 * 63 fits an int16 pair sum; 2 * 255 * 127 does not


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
        self.register_load_state_dict_post_hook(lambda module, _incompatible: module._refresh_qparams())

    def _fill(self, module: nn.Module, input_qparams: tuple[float, int]) -> None:
        self.weight_int8, self.weight_scale = symmetric_int8_per_row(module.weight, WEIGHT_QUANT_MAX)
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
        x_uint8 = _ops.quantize_per_tensor.default(x, scale, zero_point, UINT8_MIN, UINT8_MAX, torch.uint8)
        return _ops.dequantize_per_tensor.default(x_uint8, scale, zero_point, UINT8_MIN, UINT8_MAX, torch.uint8)

    def _dequantized_weight(self) -> torch.Tensor:
        return _ops.dequantize_per_channel.default(
            self.weight_int8, self.weight_scale, self.weight_zero_point, 0, -128, 127, torch.int8
        )


class Int8StaticLinear(ReplacesLinear, _Int8Static):
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


class Int8StaticConv2d(ReplacesConv2d, _Int8Static):
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
