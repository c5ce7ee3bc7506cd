"""A quantized model as (plain tensors for safetensors, JSON recipe), and back onto a float skeleton.

The recipe names each quantized module and its kind + shape spec; the tensors are the whole model's state
dict (int8 values and scales of the quantized modules, fp32 parameters of the rest). Restoring replaces the
named modules of a fresh fp32 skeleton with empty quantized ones, then loads every tensor strictly, with
dtype and shape checked first (`load_state_dict` would silently cast a float tensor into an int8 buffer).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Every kind a recipe may name registers itself on import: restoring must know them all, whatever else
# the process happened to import.
from slimserve.quant import embedding, int4_weight_only, int8_dynamic, int8_static, int8_weight_only  # noqa: F401
from slimserve.quant.base import QuantizedModule, install, kind_named, set_training
from slimserve.quant.half import HalfPrecision, cast_to_half, half_precision_of

RECIPE_FORMAT = "slimserve.quantization"
RECIPE_VERSION = 1
# Version 2 adds `half` (a half-precision model's dtype and fp32 modules); integer recipes stay version 1,
# readable by every SlimServe, and a reader of version 1 only refuses a half one by its version.
HALF_RECIPE_VERSION = 2


def quantization_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    modules = {
        name: {"kind": module.kind, **module.spec()}
        for name, module in model.named_modules()
        if isinstance(module, QuantizedModule)
    }
    tensors: dict[str, torch.Tensor] = {}
    seen_storage: dict[int, str] = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        storage = tensor.untyped_storage().data_ptr()
        # safetensors refuses tensors sharing memory (tied weights): store each storage once, copied.
        tensors[name] = tensor.clone().contiguous() if storage in seen_storage else tensor.contiguous()
        seen_storage.setdefault(storage, name)
    half = half_precision_of(model)
    if half is None:
        return tensors, {"format": RECIPE_FORMAT, "version": RECIPE_VERSION, "modules": modules}
    return tensors, {"format": RECIPE_FORMAT, "version": HALF_RECIPE_VERSION, "modules": modules, "half": half.to_recipe()}


def restore_quantization(skeleton: nn.Module, recipe: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    entries = _checked_entries(recipe)
    replacements = {}
    for name, entry in entries.items():
        where = f"recipe.modules[{name!r}]"
        try:
            original = skeleton.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{where}: the model has no module named {name!r}") from None
        kind = kind_named(entry.get("kind"), f"{where}.kind")
        try:
            module = kind.empty(entry, where)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if not module.float_shape_matches(original):
            raise ValueError(f"{where}: a {kind.kind} of spec {entry} cannot replace {type(original).__name__} {original}")
        replacements[name] = module
    install(skeleton, replacements)
    if "half" in recipe:
        half = HalfPrecision.from_recipe(recipe["half"], "recipe.half")
        try:
            cast_to_half(skeleton, half)
        except AttributeError as exc:
            raise ValueError(f"recipe.half.keep_float: {exc}") from None
    _check_tensors(skeleton, tensors)
    skeleton.load_state_dict(tensors, strict=True)
    return set_training(skeleton, False)


def _checked_entries(recipe: dict[str, Any]) -> dict[str, dict[str, Any]]:
    if not isinstance(recipe, dict) or recipe.get("format") != RECIPE_FORMAT:
        raise ValueError(f"recipe.format: expected {RECIPE_FORMAT!r}, got {recipe.get('format') if isinstance(recipe, dict) else recipe!r}")
    if recipe.get("version") not in (RECIPE_VERSION, HALF_RECIPE_VERSION):
        raise ValueError(f"recipe.version: this SlimServe reads versions {RECIPE_VERSION} and {HALF_RECIPE_VERSION}, got {recipe.get('version')!r}")
    modules = recipe.get("modules")
    if not isinstance(modules, dict) or not all(isinstance(entry, dict) for entry in modules.values()):
        raise ValueError("recipe.modules: expected a mapping of module name to {kind, ...spec}")
    return modules


def _check_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"tensors: missing {missing[:5]} / unexpected {unexpected[:5]} for this model and recipe")
    for name, target in expected.items():
        given = tensors[name]
        if given.dtype != target.dtype or tuple(given.shape) != tuple(target.shape):
            raise ValueError(
                f"tensors[{name!r}]: expected {target.dtype} {tuple(target.shape)}, got {given.dtype} {tuple(given.shape)}"
            )
