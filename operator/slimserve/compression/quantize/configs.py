"""One config class per quantization method; the class, not the method's name, picks the quantizer.

`method` is the name the CRD's `quantize.method` and the status use; `config_of` turns a quantize step's
spec into its method's config. Adding a method is a config class here and a quantizer in `methods`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from slimserve.api.steps import QuantizeConfig

CONFIG_CLASSES: dict[str, type["QuantizationConfig"]] = {}


@dataclass(frozen=True)
class QuantizationConfig:
    """What every method takes: module names (and everything under them) that stay float."""

    method: ClassVar[str]
    keep_float: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "method" in cls.__dict__:
            if cls.method in CONFIG_CLASSES:
                raise TypeError(f"quantization method {cls.method!r} has two config classes")
            CONFIG_CLASSES[cls.method] = cls

    @classmethod
    def from_spec(cls, spec: QuantizeConfig) -> "QuantizationConfig":
        return cls(keep_float=tuple(spec.keep_float or ()))


@dataclass(frozen=True)
class Int8DynamicConfig(QuantizationConfig):
    """int8 weights per output channel, activations quantized per token at run time."""

    method = "int8-dynamic"


@dataclass(frozen=True)
class Int8StaticConfig(QuantizationConfig):
    """int8 weights, uint8 activations whose range is calibrated on `calibration_samples` task samples."""

    method = "int8-static"
    calibration_samples: int = 128

    @classmethod
    def from_spec(cls, spec: QuantizeConfig) -> "Int8StaticConfig":
        return cls(keep_float=tuple(spec.keep_float or ()), calibration_samples=spec.calibration_samples)


@dataclass(frozen=True)
class Int8WeightOnlyConfig(QuantizationConfig):
    """int8 weights, float activations and compute."""

    method = "int8-weight-only"


@dataclass(frozen=True)
class Int4WeightOnlyConfig(QuantizationConfig):
    """Grouped uint4 weights, float activations; CUDA only."""

    method = "int4-weight-only"


def config_class_named(method: str) -> type[QuantizationConfig]:
    try:
        return CONFIG_CLASSES[method]
    except KeyError:
        raise ValueError(f"method: unknown quantization method {method!r}; known: {', '.join(CONFIG_CLASSES)}") from None


def config_of(config: QuantizeConfig | QuantizationConfig) -> QuantizationConfig:
    """The method's config of a quantize step's spec (a method's config is returned as it is)."""
    if isinstance(config, QuantizationConfig):
        return config
    return config_class_named(config.method).from_spec(config)
