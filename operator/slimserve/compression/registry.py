"""One transform per step config class, looked up by the config's type (like torchao's `quantize_(model, config)`).

A transform takes the model state, its config and the step context and returns a new state. A step kind
may also register `relaxations`: gentler configs, most aggressive first, that the accuracy-budget search
tries when the spec's own config drops the metric too much.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from slimserve.api.steps import StepConfig

if TYPE_CHECKING:
    from slimserve.compression.state import ModelState, StepContext

Transform = Callable[["ModelState", StepConfig, "StepContext"], "ModelState"]
Relaxations = Callable[["ModelState", StepConfig, "StepContext"], Iterator[StepConfig]]
F = TypeVar("F")

_TRANSFORMS: dict[type, Transform] = {}
_RELAXATIONS: dict[type, Relaxations] = {}
# Modules whose import registers the built-in step kinds.
_STEP_MODULES = ("slimserve.compression.prune", "slimserve.compression.distill", "slimserve.compression.quantize_step")


def register_transform(config_class: type) -> Callable[[F], F]:
    def decorator(function: F) -> F:
        if config_class in _TRANSFORMS:
            raise ValueError(f"a transform for {config_class.__name__} is already registered")
        _TRANSFORMS[config_class] = function  # type: ignore[assignment]
        return function

    return decorator


def register_relaxations(config_class: type) -> Callable[[F], F]:
    def decorator(function: F) -> F:
        _RELAXATIONS[config_class] = function  # type: ignore[assignment]
        return function

    return decorator


def _load_step_modules() -> None:
    for module in _STEP_MODULES:
        importlib.import_module(module)


def transform_for(config: StepConfig) -> Transform:
    _load_step_modules()
    try:
        return _TRANSFORMS[type(config)]
    except KeyError:
        raise LookupError(f"no transform registered for {type(config).__name__}") from None


def relaxations_for(config: StepConfig) -> Relaxations | None:
    _load_step_modules()
    return _RELAXATIONS.get(type(config))


def apply_step(state: "ModelState", config: StepConfig, context: "StepContext") -> "ModelState":
    return transform_for(config)(state, config, context)
