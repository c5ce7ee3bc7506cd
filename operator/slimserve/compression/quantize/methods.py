"""The built-in quantizers, one per method config: which float modules each replaces, and by what.

| method            | nn.Linear               | nn.Conv2d               | nn.Embedding   |
| ----------------- | ----------------------- | ----------------------- | -------------- |
| int8-dynamic      | Int8DynamicLinear       | float                   | Int8Embedding  |
| int8-static       | Int8StaticLinear        | Int8StaticConv2d        | Int8Embedding  |
| int8-weight-only  | Int8WeightOnlyLinear    | Int8WeightOnlyConv2d    | Int8Embedding  |
| int4-weight-only  | Int4WeightOnlyLinear    | float                   | Int4Embedding  |
| fp16, bf16        | the whole model cast to the 16-bit float, its inputs and outputs fp32       |

int4-weight-only stores its config's `int8_layers` as Int8DynamicLinear (a table: Int8Embedding), and leaves a Linear float when it fits no int4 kernel (`int4_kernels.kernel_fits`); each other
Linear (table) gets the config's group size, or the largest one its input width (row) takes when that is coarser.
fp16 and bf16 replace no module: the whole model is cast (`slimserve.quant.half`).
A torch.export program has no modules to swap: int8-static quantizes its graph through pt2e (`program`); the other
methods refuse programs.
With `algorithm: gptq` the weight-only methods' Linears get GPTQ's codes (`compression.gptq`) in the same modules.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from slimserve.compression.gptq import collect_hessians, gptq_int4_linear, gptq_int8_linear
from slimserve.compression.quantize.calibration import calibrate
from slimserve.compression.quantize.configs import (
    BFloat16Config,
    Float16Config,
    HalfPrecisionConfig,
    Int4WeightOnlyConfig,
    Int8DynamicConfig,
    Int8StaticConfig,
    Int8WeightOnlyConfig,
    QuantizationConfig,
)
from slimserve.compression.quantize.program import int8_static_program
from slimserve.compression.quantize.registry import Convert, register_model_cast, register_program_quantizer, register_quantizer
from slimserve.quant.embedding import Int4Embedding, Int8Embedding, table_group_size
from slimserve.quant.half import HalfPrecision, cast_to_half
from slimserve.quant.int4_weight_only import Int4WeightOnlyLinear, group_size_for
from slimserve.quant.int8_dynamic import Int8DynamicLinear
from slimserve.quant.int8_static import Int8StaticConv2d, Int8StaticLinear
from slimserve.quant.int8_weight_only import Int8WeightOnlyConv2d, Int8WeightOnlyLinear

FromFloat = Callable[[nn.Module], nn.Module]


def _register_by_type(config_class: type[QuantizationConfig], converters: dict[type[nn.Module], FromFloat], **options) -> None:
    """A quantizer that converts each module by its type alone (no calibration)."""

    def prepare(_model: nn.Module, _config: QuantizationConfig, _names: list[str], _calibration) -> Convert:
        return lambda _name, module: converters[type(module)](module)

    register_quantizer(config_class, replaces=tuple(converters), **options)(prepare)


def _int4_group_fits(module: nn.Module) -> bool:
    return not isinstance(module, nn.Linear) or group_size_for(module.in_features, module.out_features) is not None


_register_by_type(Int8DynamicConfig, {nn.Linear: Int8DynamicLinear.from_float, nn.Embedding: Int8Embedding.from_float})
def _gptq_hessians(model: nn.Module, config: Int8WeightOnlyConfig | Int4WeightOnlyConfig, names: list[str], calibration) -> dict:
    """The Linears' GPTQ Hessians when the config asks for gptq (empty for rtn)."""
    if not config.calibrates():
        return {}
    if not calibration:
        raise ValueError(f"calibration: {config.method} with algorithm gptq needs calibration batches (tuples of model inputs)")
    modules = dict(model.named_modules())
    return collect_hessians(model, [name for name in names if type(modules[name]) is nn.Linear], calibration)


@register_quantizer(Int8WeightOnlyConfig, replaces=(nn.Linear, nn.Conv2d, nn.Embedding))
def _int8_weight_only(model: nn.Module, config: Int8WeightOnlyConfig, names: list[str], calibration) -> Convert:
    hessians = _gptq_hessians(model, config, names, calibration)

    def convert(name: str, module: nn.Module) -> nn.Module:
        if name in hessians:
            return gptq_int8_linear(module, hessians[name])
        if isinstance(module, nn.Embedding):
            return Int8Embedding.from_float(module)
        kind = Int8WeightOnlyConv2d if isinstance(module, nn.Conv2d) else Int8WeightOnlyLinear
        return kind.from_float(module)

    return convert


@register_quantizer(Int4WeightOnlyConfig, replaces=(nn.Linear, nn.Embedding), accepts=_int4_group_fits)
def _int4_weight_only(model: nn.Module, config: Int4WeightOnlyConfig, names: list[str], calibration) -> Convert:

    unknown = sorted(set(config.int8_layers) - set(names))
    if unknown:
        raise ValueError(f"int8Layers: {unknown[0]!r} is not a Linear or Embedding this config quantizes")
    hessians = _gptq_hessians(model, config, names, calibration)

    def convert(name: str, module: nn.Module) -> nn.Module:
        if isinstance(module, nn.Embedding):
            table_groups = table_group_size(module.embedding_dim, config.group_size)
            if name in config.int8_layers or table_groups is None:
                return Int8Embedding.from_float(module)
            return Int4Embedding.from_float(module, table_groups)
        group_size = group_size_for(module.in_features, module.out_features, config.group_size)
        if name in hessians:
            if name in config.int8_layers:
                return gptq_int8_linear(module, hessians[name], Int8DynamicLinear)
            return gptq_int4_linear(module, hessians[name], group_size)
        if name in config.int8_layers:
            return Int8DynamicLinear.from_float(module)
        return Int4WeightOnlyLinear.from_float(module, group_size)

    return convert


@register_quantizer(Int8StaticConfig, replaces=(nn.Linear, nn.Conv2d, nn.Embedding), needs_calibration=True)
def _int8_static(model: nn.Module, config: QuantizationConfig, names: list[str], calibration: list[tuple] | None) -> Convert:
    modules = dict(model.named_modules())
    observed = [name for name in names if not isinstance(modules[name], nn.Embedding)]
    ranges = calibrate(model, observed, calibration, config.calibration_samples)

    def convert(name: str, module: nn.Module) -> nn.Module:
        if isinstance(module, nn.Embedding):
            return Int8Embedding.from_float(module)
        kind = Int8StaticConv2d if isinstance(module, nn.Conv2d) else Int8StaticLinear
        return kind.from_float(module, ranges[name].uint8_params())

    return convert


register_program_quantizer(Int8StaticConfig)(int8_static_program)  # torch.export programs: pt2e (see `program`)


def _cast_to_half(model: nn.Module, config: HalfPrecisionConfig) -> None:
    cast_to_half(model, HalfPrecision(config.method, config.keep_float))


for _half_config in (Float16Config, BFloat16Config):
    register_model_cast(_half_config, replaces=(nn.Linear, nn.Conv2d, nn.Embedding))(_cast_to_half)
