"""int8-static: Conv2d and Linear with int8 weights and activations whose range is calibrated ahead of time.

Activations are uint8 with one (scale, zero point) per tensor, from the min/max seen on calibration
batches; weights are symmetric int8 per output channel (the x86 oneDNN convention: u8 activations, s8
weights, which VNNI multiplies natively).

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

from slimserve.compression.quantize.base import QuantizedModule, ReplacesLinear
from slimserve.compression.quantize.conv_geometry import ConvGeometry, ReplacesConv2d
from slimserve.compression.quantize.kernels import MIN_SCALE, symmetric_int8_per_row

_ops = torch.ops.quantized_decomposed
UINT8_MIN, UINT8_MAX = 0, 255


class ActivationRange:
    """Running min/max of a module's input over the calibration batches."""

    def __init__(self) -> None:
        self.low = float("inf")
        self.high = float("-inf")

    def observe(self, x: torch.Tensor) -> None:
        self.low = min(self.low, float(x.detach().min()))
        self.high = max(self.high, float(x.detach().max()))

    def uint8_params(self) -> tuple[float, int]:
        """(scale, zero point) of an asymmetric uint8 grid covering the range and exactly representing 0."""
        if self.low > self.high:
            raise ValueError("calibration never reached this layer")
        low, high = min(self.low, 0.0), max(self.high, 0.0)
        scale = max((high - low) / (UINT8_MAX - UINT8_MIN), MIN_SCALE)
        zero_point = int(min(max(round(UINT8_MIN - low / scale), UINT8_MIN), UINT8_MAX))
        return scale, zero_point


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

    def _fill(self, module: nn.Module, activation: ActivationRange) -> None:
        self.weight_int8, self.weight_scale = symmetric_int8_per_row(module.weight)
        if module.bias is not None:
            self.bias = module.bias.detach().float().clone()
        scale, zero_point = activation.uint8_params()
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
    def from_float(cls, linear: nn.Linear, activation: ActivationRange) -> "Int8StaticLinear":
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        module._fill(linear, activation)
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
    def from_float(cls, conv: nn.Conv2d, activation: ActivationRange) -> "Int8StaticConv2d":
        module = cls(ConvGeometry.of(conv))
        module._fill(conv, activation)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self._dequantized_input(x.float()), self._dequantized_weight(), self.bias, **self.geometry.conv_kwargs())


def calibrate(model: nn.Module, names: list[str], batches: list[tuple], max_samples: int) -> dict[str, ActivationRange]:
    """Run `batches` (tuples of forward arguments) through the float model until `max_samples` rows have
    gone through, recording the input range of each named module."""
    modules = dict(model.named_modules())
    ranges = {name: ActivationRange() for name in names}
    handles = [
        modules[name].register_forward_pre_hook(lambda _module, args, r=ranges[name]: r.observe(args[0])) for name in names
    ]
    seen = 0
    try:
        with torch.inference_mode():
            for index, batch in enumerate(batches):
                if not isinstance(batch, tuple) or not batch or not isinstance(batch[0], torch.Tensor):
                    raise ValueError(f"calibration[{index}]: expected a tuple of input tensors, got {type(batch).__name__}")
                model(*batch)
                seen += int(batch[0].shape[0]) if batch[0].dim() else 1
                if seen >= max_samples:
                    break
    finally:
        for handle in handles:
            handle.remove()
    unreached = [name for name, r in ranges.items() if r.low > r.high]
    if unreached:
        raise ValueError(f"calibration: the batches never reached {unreached[0]!r}; cannot calibrate it")
    return ranges
