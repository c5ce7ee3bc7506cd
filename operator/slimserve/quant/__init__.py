"""The quantization runtime: what a quantized model is made of, and what serving one needs.

A leaf package (it imports nothing else of SlimServe), used by `slimserve.models` to rebuild and serve an
artifact and by `slimserve.compression` to quantize and save one:

- the quantized modules (`QuantizedModule` and its kinds) and the integer kernels they run;
- `quantization_state(model)` -> `(tensors, recipe)`: plain tensors for safetensors + a JSON recipe;
- `restore_quantization(skeleton, recipe, tensors)`: rebuild the quantized model on a fresh fp32 skeleton;
- `optimize_for_inference(model, example_inputs)`: torch.compile once (freezing, dynamic shapes) + warm-up.

Every quantized module stores int8 / uint8 values and float scales as buffers: nothing is pickled, and
`torch.load` is never called. Choosing and converting layers (calibration, the budget search) is the
compression engine's (`slimserve.compression.quantize`).
"""

from __future__ import annotations

import logging as _logging


class _TorchaoEnumNotice(_logging.Filter):
    """torchao 0.18 registers its KernelPreference enum the way torch 2.14 deprecates, and torch logs a warning
    on every import: noise on stderr, where `slimserve compress` reports failures one line per reason."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "is an Enum subclass and is now natively supported" not in str(record.msg)


_logging.getLogger("torch.utils._pytree").addFilter(_TorchaoEnumNotice())


from slimserve.quant.base import BackendUnsupportedError, QuantizedModule
from slimserve.quant.optimize import OptimizedForward, optimize_for_inference
from slimserve.quant.serialize import quantization_state, restore_quantization

__all__ = [
    "BackendUnsupportedError",
    "OptimizedForward",
    "QuantizedModule",
    "optimize_for_inference",
    "quantization_state",
    "restore_quantization",
]
