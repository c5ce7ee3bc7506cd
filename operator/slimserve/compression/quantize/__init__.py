"""Quantization in the compression engine: which layers, calibrated how, converted by which quantizer.

- `apply_quantization(model, config, *, calibration)`: swap Linear / Conv2d / Embedding
  modules for quantized ones, or cast the whole model to fp16 / bf16 (see `methods` for which, per method);
  `config.keep_float` names stay float. A torch.export program goes through its method's program path
  (int8-static: PyTorch's pt2e, `program`), the same registry entry.
- `quantizable_layers(model, method=None)`: names, for the layer-by-layer sensitivity search.
- `needs_calibration(config)`: whether the method wants calibration batches.

The quantizer is looked up by the type of the method's config (`configs`, `registry`), as torchao's
`quantize_(model, config)` does. The modules it produces, saving, restoring and compiling them are the
runtime's, in `slimserve.quant`.
"""

from __future__ import annotations

from torch import nn

from slimserve.api.steps import QuantizeConfig
from slimserve.compression.quantize import methods  # noqa: F401  (registers the built-in quantizers)
from slimserve.compression.quantize.apply import install_quantized, layers_to_quantize
from slimserve.compression.quantize.configs import QuantizationConfig, config_class_named, config_of
from slimserve.compression.quantize.registry import quantizer_for
from slimserve.quant.base import set_training

__all__ = ["QuantizationConfig", "apply_quantization", "needs_calibration", "quantizable_layers"]


def apply_quantization(
    model: nn.Module, config: QuantizeConfig | QuantizationConfig, *, calibration: list[tuple] | None
) -> nn.Module:
    """Quantize `model` in place (and return it, in eval mode); the forward signature is unchanged. A
    torch.export program's module is left as it was and its quantized copy returned (`quantize.program`).

    `config` is a quantize step's spec or a method's config (`Int8DynamicConfig()`...). `calibration`
    (tuples of forward arguments) is required by methods that calibrate (int8-static) and ignored by the
    others; the module swap traces nothing, so it needs no example inputs. Raises `ValueError` naming the field for a bad config (unknown keepFloat module, missing
    calibration), `BackendUnsupportedError` for a device a format has no kernel on (int4 off CPU and CUDA); the
    model is untouched then.
    """
    set_training(model, False)
    return install_quantized(model, config_of(config), calibration)


def quantizable_layers(model: nn.Module, method: str | None = None) -> list[str]:
    """Names of the modules `method` would quantize (any method when None), in module order."""
    quantizer = quantizer_for(config_class_named(method)) if method is not None else None
    return layers_to_quantize(model, quantizer)


def needs_calibration(config: QuantizeConfig | QuantizationConfig) -> bool:
    """Whether the config's method calibrates on task data (activation ranges, or GPTQ's layer inputs)."""
    method_config = config_of(config)
    return quantizer_for(type(method_config)).needs_calibration or method_config.calibrates()
