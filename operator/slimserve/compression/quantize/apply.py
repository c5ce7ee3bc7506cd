"""Which modules a quantizer replaces, and the module swap itself.

Every replacement is built (and can fail) before any is installed, so a bad config leaves the model as
it was.
"""

from __future__ import annotations

import torch
from torch import nn

from slimserve.compression.quantize.configs import QuantizationConfig
from slimserve.compression.quantize.program import program_layers
from slimserve.compression.quantize.registry import Quantizer, quantizer_for
from slimserve.compression.resident import release_mapped_weights
from slimserve.models.exported import is_program
from slimserve.quant.base import install

QUANTIZABLE_TYPES = (nn.Linear, nn.Conv2d, nn.Embedding)


def layers_to_quantize(model: nn.Module, quantizer: Quantizer | None, keep_float: tuple[str, ...] = ()) -> list[str]:
    """Names of the modules `quantizer` would replace (all quantizable ones when None), minus `keep_float` and
    everything under a kept module; of a program, its convolutions and linears when the method quantizes programs."""
    if is_program(model):
        candidates = program_layers(model) if quantizer is None or quantizer.quantize_program else []
    else:
        candidates = [
            name for name, module in model.named_modules()
            if name and (quantizer.quantizes(module) if quantizer else type(module) in QUANTIZABLE_TYPES)
        ]
    return [name for name in candidates if not any(name == k or name.startswith(k + ".") for k in keep_float)]


def check_keep_float(model: nn.Module, keep_float: tuple[str, ...]) -> None:
    known = {name for name, _ in model.named_modules() if name}
    for index, name in enumerate(keep_float):
        if name not in known:
            raise ValueError(f"keepFloat[{index}]: no module named {name!r} in this model")


def quantize_modules(model: nn.Module, config: QuantizationConfig, calibration: list[tuple] | None) -> dict[str, nn.Module]:
    """The quantized replacement of every module the config quantizes, by name (the model is untouched)."""
    check_keep_float(model, config.keep_float)
    quantizer = quantizer_for(type(config))
    names = layers_to_quantize(model, quantizer, config.keep_float)
    modules = dict(model.named_modules())
    if quantizer.needs_calibration and not calibration:
        raise ValueError(f"calibration: {config.method} needs calibration batches (tuples of model inputs)")
    convert = quantizer.prepare(model, config, names, calibration)
    replacements = {}
    for name in names:
        release_mapped_weights(model)  # memory-mapped float weights: read layer by layer, not kept resident
        try:
            replacements[name] = convert(name, modules[name]).to(_device_of(modules[name]))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return replacements


def install_quantized(model: nn.Module, config: QuantizationConfig, calibration: list[tuple] | None) -> nn.Module:
    """The quantized model: `model` itself with its modules swapped or cast, or a program's quantized copy."""
    quantizer = quantizer_for(type(config))
    if is_program(model):
        if quantizer.quantize_program is None:
            raise ValueError(f"{config.method} does not quantize torch.export programs (int8-static does)")
        check_keep_float(model, config.keep_float)
        return quantizer.quantize_program(model, config, calibration)
    if quantizer.cast_model is not None:
        check_keep_float(model, config.keep_float)
        quantizer.cast_model(model, config)
        return model
    install(model, quantize_modules(model, config, calibration))
    return model


def _device_of(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))
