"""Quantization in the compression engine: the contract the pipeline and the server code against.

- `apply_quantization(model, config, *, example_inputs, calibration)`: swap Linear / Conv2d / Embedding
  modules for quantized ones (see `apply` for which, per method); `config.keep_float` names stay float.
- `quantization_state(model)` -> `(tensors, recipe)`: plain tensors for safetensors + a JSON recipe.
- `restore_quantization(skeleton, recipe, tensors)`: rebuild the quantized model on a fresh fp32 skeleton.
- `optimize_for_inference(model, example_inputs)`: torch.compile once (freezing, dynamic shapes) + warm-up.
- `quantizable_layers(model, method=None)`: names, for the layer-by-layer sensitivity search.

Every quantized module stores int8 / uint8 values and float scales as buffers: nothing is pickled, and
`torch.load` is never called.
"""

from __future__ import annotations

from torch import nn

from slimserve.api.steps import QuantizeConfig
from slimserve.compression.quantize.apply import install, layers_to_quantize, quantize_modules
from slimserve.compression.quantize.base import QuantizedModule
from slimserve.compression.quantize.int4_weight_only import BackendUnsupportedError
from slimserve.compression.quantize.optimize import OptimizedForward, optimize_for_inference
from slimserve.compression.quantize.serialize import quantization_state, restore_quantization

__all__ = [
    "BackendUnsupportedError",
    "OptimizedForward",
    "QuantizedModule",
    "apply_quantization",
    "optimize_for_inference",
    "quantizable_layers",
    "quantization_state",
    "restore_quantization",
]


def apply_quantization(
    model: nn.Module, config: QuantizeConfig, *, example_inputs: tuple, calibration: list[tuple] | None
) -> nn.Module:
    """Quantize `model` in place (and return it, in eval mode); the forward signature is unchanged.

    `calibration` (tuples of forward arguments) is required by int8-static and ignored by the other
    methods; `example_inputs` is accepted for API symmetry with export-based flows (the module swap does
    not trace). Raises `ValueError` naming the field for a bad config (unknown keepFloat module, missing
    calibration), `BackendUnsupportedError` for int4-weight-only on a CPU; the model is untouched then.
    """
    del example_inputs  # the swap needs no trace
    model.eval()
    install(model, quantize_modules(model, config, calibration))
    return model


def quantizable_layers(model: nn.Module, method: str | None = None) -> list[str]:
    """Names of the modules `method` would quantize (any method when None), in module order."""
    return layers_to_quantize(model, method)

