"""The common shape of every quantized module, and the registry that rebuilds them from a recipe.

A quantized module holds only plain tensors (int8 / uint8 values, float scales, float biases) as
registered buffers, so its `state_dict()` goes straight into safetensors. `spec()` is the JSON-able rest
(shapes, strides, group size...): `kind` + `spec` is enough to allocate an empty module of the right shape,
into which `load_state_dict` then copies the stored tensors. No pickle anywhere.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

KINDS: dict[str, type["QuantizedModule"]] = {}


def set_training(model: nn.Module, training: bool) -> nn.Module:
    """`model.train(training)`; a torch.export program's module fixed its mode when exported and refuses to switch."""
    try:
        model.train(training)
    except NotImplementedError:
        pass
    return model


class BackendUnsupportedError(NotImplementedError):
    """The format has no kernel on this device."""


class QuantizedModule(nn.Module):
    kind: ClassVar[str]  # the name a recipe stores, e.g. "int8-dynamic-linear"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            if cls.kind in KINDS:
                raise TypeError(f"quantized module kind {cls.kind!r} registered twice")
            KINDS[cls.kind] = cls

    def spec(self) -> dict[str, Any]:
        """JSON-able shape parameters; `type(self).empty(self.spec())` allocates a module of the same shape."""
        raise NotImplementedError

    @classmethod
    def empty(cls, spec: dict[str, Any], where: str = "module") -> "QuantizedModule":
        """A module of the shape `spec` describes, its buffers allocated but not filled; errors name `where`."""
        raise NotImplementedError

    def float_shape_matches(self, module: nn.Module) -> bool:
        """Whether `module` (the float skeleton's module at the same name) has the shape this one replaces."""
        raise NotImplementedError


def kind_named(kind: str, where: str) -> type[QuantizedModule]:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"{where}: unknown quantized module kind {kind!r}; known: {', '.join(sorted(KINDS))}") from None


def spec_int(spec: dict[str, Any], key: str, where: str, minimum: int = 1) -> int:
    """Read an integer field of a recipe entry, with an error naming it."""
    value = spec.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{where}.{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def spec_ints(spec: dict[str, Any], key: str, where: str, length: int) -> tuple[int, ...]:
    value = spec.get(key)
    if not isinstance(value, list | tuple) or len(value) != length or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{where}.{key}: expected a list of {length} integers, got {value!r}")
    return tuple(value)


def spec_bool(spec: dict[str, Any], key: str, where: str) -> bool:
    value = spec.get(key)
    if not isinstance(value, bool):
        raise ValueError(f"{where}.{key}: expected true or false, got {value!r}")
    return value


class ReplacesLinear:
    """Shape bookkeeping of a quantized module standing in for an `nn.Linear`; its `__init__` takes
    (in_features, out_features, bias). Listed before the QuantizedModule base so these methods win."""

    in_features: int
    out_features: int
    bias: Any

    def spec(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    @classmethod
    def empty(cls, spec: dict[str, Any], where: str = "module"):
        return cls(spec_int(spec, "in_features", where), spec_int(spec, "out_features", where), spec_bool(spec, "bias", where))

    def float_shape_matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear) and (module.in_features, module.out_features) == (self.in_features, self.out_features)


def install(model: nn.Module, replacements: dict[str, nn.Module]) -> None:
    """Put each replacement in place of the module of the same name."""
    for name, module in replacements.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module)
