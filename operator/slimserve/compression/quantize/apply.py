"""Which modules each method quantizes, and the module swap itself.

| method            | nn.Linear               | nn.Conv2d               | nn.Embedding   |
| ----------------- | ----------------------- | ----------------------- | -------------- |
| int8-dynamic      | Int8DynamicLinear       | float                   | Int8Embedding  |
| int8-static       | Int8StaticLinear        | Int8StaticConv2d        | Int8Embedding  |
| int8-weight-only  | Int8WeightOnlyLinear    | Int8WeightOnlyConv2d    | Int8Embedding  |
| int4-weight-only  | Int4WeightOnlyLinear    | float                   | Int8Embedding  |

Every replacement is built (and can fail) before any is installed, so a bad config leaves the model as
it was.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from slimserve.api.steps import QuantizeConfig
from slimserve.compression.quantize.embedding import Int8Embedding
from slimserve.compression.quantize.int4_weight_only import Int4WeightOnlyLinear, group_size_for, require_cuda
from slimserve.compression.quantize.int8_dynamic import Int8DynamicLinear
from slimserve.compression.quantize.int8_static import Int8StaticConv2d, Int8StaticLinear, calibrate
from slimserve.compression.quantize.int8_weight_only import Int8WeightOnlyConv2d, Int8WeightOnlyLinear

METHOD_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "int8-dynamic": (nn.Linear, nn.Embedding),
    "int8-static": (nn.Linear, nn.Conv2d, nn.Embedding),
    "int8-weight-only": (nn.Linear, nn.Conv2d, nn.Embedding),
    "int4-weight-only": (nn.Linear, nn.Embedding),
}
QUANTIZABLE_TYPES = (nn.Linear, nn.Conv2d, nn.Embedding)


def layers_to_quantize(model: nn.Module, method: str | None, keep_float: list[str] | None = None) -> list[str]:
    """Names of the modules `method` would replace (all quantizable ones when None), minus `keep_float` and
    everything under a kept module."""
    if method is not None and method not in METHOD_TYPES:
        raise ValueError(f"method: unknown quantization method {method!r}; known: {', '.join(METHOD_TYPES)}")
    types = METHOD_TYPES[method] if method else QUANTIZABLE_TYPES
    kept = tuple(keep_float or ())
    names = []
    for name, module in model.named_modules():
        if not name or type(module) not in types:  # exact types: a subclass may change forward
            continue
        if any(name == k or name.startswith(k + ".") for k in kept):
            continue
        if method == "int4-weight-only" and isinstance(module, nn.Linear) and group_size_for(module.in_features) is None:
            continue  # no int4 group size divides this layer's inputs: it stays float
        names.append(name)
    return names


def check_keep_float(model: nn.Module, keep_float: list[str] | None) -> None:
    known = {name for name, _ in model.named_modules() if name}
    for index, name in enumerate(keep_float or ()):
        if name not in known:
            raise ValueError(f"keepFloat[{index}]: no module named {name!r} in this model")


def quantize_modules(
    model: nn.Module, config: QuantizeConfig, calibration: list[tuple] | None
) -> dict[str, nn.Module]:
    """The quantized replacement of every module the config quantizes, by name (the model is untouched)."""
    check_keep_float(model, config.keep_float)
    names = layers_to_quantize(model, config.method, config.keep_float)
    modules = dict(model.named_modules())
    if config.method == "int4-weight-only":
        require_cuda(_device_of(model), "the model")
    build = _builder(model, config, names, calibration)
    replacements = {}
    for name in names:
        try:
            replacements[name] = build(name, modules[name]).to(_device_of(modules[name]))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return replacements


def _builder(
    model: nn.Module, config: QuantizeConfig, names: list[str], calibration: list[tuple] | None
) -> Callable[[str, nn.Module], nn.Module]:
    method = config.method
    if method == "int8-dynamic":
        return lambda _name, m: Int8DynamicLinear.from_float(m) if isinstance(m, nn.Linear) else Int8Embedding.from_float(m)
    if method == "int8-weight-only":
        return lambda _name, m: _weight_only_int8(m)
    if method == "int4-weight-only":
        return lambda _name, m: (
            Int4WeightOnlyLinear.from_float(m, group_size_for(m.in_features)) if isinstance(m, nn.Linear) else Int8Embedding.from_float(m)
        )
    if not calibration:
        raise ValueError("calibration: int8-static needs calibration batches (tuples of model inputs)")
    modules = dict(model.named_modules())
    observed = [name for name in names if not isinstance(modules[name], nn.Embedding)]
    ranges = calibrate(model, observed, calibration, config.calibration_samples)

    def static(name: str, module: nn.Module) -> nn.Module:
        if isinstance(module, nn.Embedding):
            return Int8Embedding.from_float(module)
        kind = Int8StaticConv2d if isinstance(module, nn.Conv2d) else Int8StaticLinear
        return kind.from_float(module, ranges[name])

    return static


def _device_of(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _weight_only_int8(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.Linear):
        return Int8WeightOnlyLinear.from_float(module)
    if isinstance(module, nn.Conv2d):
        return Int8WeightOnlyConv2d.from_float(module)
    return Int8Embedding.from_float(module)


def install(model: nn.Module, replacements: dict[str, nn.Module]) -> None:
    """Put each replacement in place of the module of the same name."""
    for name, module in replacements.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module)
