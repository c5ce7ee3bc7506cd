"""Quantizers by config class: how a method picks its modules and converts them, looked up from the type
of its config (as torchao's `quantize_(model, config)` does), so no code compares method names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import nn

from slimserve.compression.quantize.configs import QuantizationConfig

# (name, float module) -> its quantized replacement
Convert = Callable[[str, nn.Module], nn.Module]
# (model, config, names of the modules to convert, calibration batches) -> convert; runs calibration if any
Prepare = Callable[[nn.Module, QuantizationConfig, list[str], "list[tuple] | None"], Convert]
# (model, config) -> None: a method that changes the whole model in place instead of swapping modules
CastModel = Callable[[nn.Module, QuantizationConfig], None]
# (program's module, config, calibration batches) -> the quantized program: a torch.export program's layers are
# ops of its graph, not modules to swap
QuantizeProgram = Callable[[nn.Module, QuantizationConfig, "list[tuple] | None"], nn.Module]


def any_module(_module: nn.Module) -> bool:
    return True


@dataclass(frozen=True)
class Quantizer:
    replaces: tuple[type[nn.Module], ...]  # exact types: a subclass may change forward
    prepare: Prepare | None  # None for a whole-model cast
    needs_calibration: bool = False
    accepts: Callable[[nn.Module], bool] = any_module  # a module of a replaced type it can still not convert
    cast_model: CastModel | None = None  # set instead of prepare: `replaces` then only names the search's layers
    quantize_program: QuantizeProgram | None = None  # the method's path for torch.export programs, if it has one

    def quantizes(self, module: nn.Module) -> bool:
        return type(module) in self.replaces and self.accepts(module)


_QUANTIZERS: dict[type[QuantizationConfig], Quantizer] = {}


def register_quantizer(
    config_class: type[QuantizationConfig],
    *,
    replaces: tuple[type[nn.Module], ...],
    needs_calibration: bool = False,
    accepts: Callable[[nn.Module], bool] = any_module,
) -> Callable[[Prepare], Prepare]:
    def decorator(prepare: Prepare) -> Prepare:
        _register(config_class, Quantizer(replaces, prepare, needs_calibration, accepts))
        return prepare

    return decorator


def register_model_cast(config_class: type[QuantizationConfig], *, replaces: tuple[type[nn.Module], ...]) -> Callable[[CastModel], CastModel]:
    """Register a method that casts the whole model (fp16, bf16); `replaces` are the layers the budget search
    may keep in fp32."""

    def decorator(cast: CastModel) -> CastModel:
        _register(config_class, Quantizer(replaces, None, cast_model=cast))
        return cast

    return decorator


def register_program_quantizer(config_class: type[QuantizationConfig]) -> Callable[[QuantizeProgram], QuantizeProgram]:
    """Give the method registered for `config_class` a path for torch.export programs."""

    def decorator(quantize: QuantizeProgram) -> QuantizeProgram:
        _QUANTIZERS[config_class] = replace(quantizer_for(config_class), quantize_program=quantize)
        return quantize

    return decorator


def _register(config_class: type[QuantizationConfig], quantizer: Quantizer) -> None:
    if config_class in _QUANTIZERS:
        raise ValueError(f"a quantizer for {config_class.__name__} is already registered")
    _QUANTIZERS[config_class] = quantizer


def quantizer_for(config_class: type[QuantizationConfig]) -> Quantizer:
    try:
        return _QUANTIZERS[config_class]
    except KeyError:
        raise LookupError(f"no quantizer registered for {config_class.__name__}") from None

