"""One config class per quantization method; the class, not the method's name, picks the quantizer.

`method` is the name the CRD's `quantize.method` and the status use; `config_of` turns a quantize step's
spec into its method's config. Adding a method is a config class here and a quantizer in `methods`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from slimserve.api.steps import QuantizeConfig
from slimserve.quant.int4_kernels import KERNEL_GROUP_SIZES
from slimserve.quant.embedding import table_group_size
from slimserve.quant.int4_weight_only import group_size_for

CONFIG_CLASSES: dict[str, type["QuantizationConfig"]] = {}


@dataclass(frozen=True)
class QuantizationConfig:
    """What every method takes: module names (and everything under them) that stay float."""

    method: ClassVar[str]
    keep_float: tuple[str, ...] = ()
    # The spec field the budget search adds sensitive layers to: the next precision up from the method's.
    higher_precision_field: ClassVar[str] = "keep_float"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "method" in cls.__dict__:
            if cls.method in CONFIG_CLASSES:
                raise TypeError(f"quantization method {cls.method!r} has two config classes")
            CONFIG_CLASSES[cls.method] = cls

    @classmethod
    def from_spec(cls, spec: QuantizeConfig) -> "QuantizationConfig":
        return cls(keep_float=tuple(spec.keep_float or ()))

    def finer_group_sizes(self, model: nn.Module) -> tuple[int, ...]:
        """Group sizes finer than this config's that change `model`'s layers, most compressed first: the budget
        search tries them before keeping layers in higher precision (empty for methods without groups)."""
        return ()

    def calibrates(self) -> bool:
        """Whether this config needs calibration batches beyond what its method always needs."""
        return False


@dataclass(frozen=True)
class WeightOnlyAlgorithm:
    """Weight-only methods' `algorithm`: rtn rounds to nearest; gptq compensates rounding errors on
    `calibration_samples` task samples (`compression.gptq`)."""

    algorithm: str = "rtn"
    calibration_samples: int = 128

    def calibrates(self) -> bool:
        return self.algorithm == "gptq"


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
class Int8WeightOnlyConfig(WeightOnlyAlgorithm, QuantizationConfig):
    """int8 weights, float activations and compute."""

    method = "int8-weight-only"

    @classmethod
    def from_spec(cls, spec: QuantizeConfig) -> "Int8WeightOnlyConfig":
        return cls(
            keep_float=tuple(spec.keep_float or ()), algorithm=spec.algorithm, calibration_samples=spec.calibration_samples
        )


@dataclass(frozen=True)
class Int4WeightOnlyConfig(WeightOnlyAlgorithm, QuantizationConfig):
    """Grouped uint4 weights (Linears and embedding tables), float activations, packed-int4 kernels on CPU and
    CUDA. `group_size` is the coarsest group a layer gets (a layer whose width it does not divide gets the next
    finer that does)."""

    method = "int4-weight-only"
    higher_precision_field = "int8_layers"
    group_size: int = max(KERNEL_GROUP_SIZES)
    int8_layers: tuple[str, ...] = ()  # Linears stored as int8-dynamic instead, tables as int8 per row

    @classmethod
    def from_spec(cls, spec: QuantizeConfig) -> "Int4WeightOnlyConfig":
        return cls(
            keep_float=tuple(spec.keep_float or ()),
            group_size=spec.group_size or cls.group_size,
            int8_layers=tuple(spec.int8_layers or ()),
            algorithm=spec.algorithm,
            calibration_samples=spec.calibration_samples,
        )

    def finer_group_sizes(self, model: nn.Module) -> tuple[int, ...]:
        shapes = [(m.in_features, m.out_features) for m in model.modules() if type(m) is nn.Linear]
        rows = [m.embedding_dim for m in model.modules() if type(m) is nn.Embedding]

        def layout(largest: int) -> tuple:
            return (*(group_size_for(*shape, largest) for shape in shapes), *(table_group_size(row, largest) for row in rows))

        sizes, layouts = [], {layout(self.group_size)}
        for size in (size for size in KERNEL_GROUP_SIZES if size < self.group_size):
            if layout(size) not in layouts:  # groups of 256 and 128 are the same model when no layer takes 256
                sizes.append(size)
                layouts.add(layout(size))
        return tuple(sizes)


@dataclass(frozen=True)
class HalfPrecisionConfig(QuantizationConfig):
    """Weights and compute in a 16-bit float; no module is replaced, the whole model is cast."""

    dtype: ClassVar[torch.dtype]


@dataclass(frozen=True)
class Float16Config(HalfPrecisionConfig):
    method = "fp16"
    dtype = torch.float16


@dataclass(frozen=True)
class BFloat16Config(HalfPrecisionConfig):
    method = "bf16"
    dtype = torch.bfloat16


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
