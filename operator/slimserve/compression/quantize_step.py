"""The quantize step: wires `slimserve.compression.quantize` (layer choice, calibration, conversion) into the pipeline.

Its budget search first tries finer groups where the method has them (int4-weight-only: 256, 128, 64, 32
inputs per scale), then keeps the most sensitive layers in float, as Intel Neural Compressor and NNCF do:
each quantizable layer is quantized alone (at the finest group size) and the damage to the model's outputs
measured; then the most damaging 1, 2, 4, ... layers stay float until the metric fits the budget.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from slimserve.api.steps import QuantizeConfig
from slimserve.compression.errors import SpecDoesNotFit
from slimserve.compression.registry import register_relaxations, register_transform
from slimserve.compression.state import ModelState, StepContext

SENSITIVITY_SAMPLES = 64  # held-out samples each layer's damage is measured on
MAX_FLOAT_CANDIDATES = 6


@register_transform(QuantizeConfig)
def quantize(state: ModelState, config: QuantizeConfig, context: StepContext) -> ModelState:
    from slimserve.compression.quantize import apply_quantization, needs_calibration, quantizable_layers

    model = state.float_copy(share_weights=True)  # quantizers build new modules; the float weights stay shared
    if not quantizable_layers(model, config.method):
        raise SpecDoesNotFit(f"{context.where}: this {state.family.name} model has no layer the quantizer supports")
    known = {name for name, _ in model.named_modules() if name}
    unknown = [name for name in config.keep_float or [] if name not in known]
    if unknown:
        raise SpecDoesNotFit(f"{context.where}.keepFloat: no module named {unknown[0]!r} in this model")
    calibration = context.task.calibration(config.calibration_samples) if needs_calibration(config) else None
    try:
        quantized = apply_quantization(model, config, calibration=calibration)
    except (ValueError, NotImplementedError) as exc:
        raise SpecDoesNotFit(f"{context.where}.method: {config.method}: {exc}") from exc
    return state.quantized(quantized, config)


@register_relaxations(QuantizeConfig)
def gentler_quantization(state: ModelState, config: QuantizeConfig, context: StepContext) -> Iterator[QuantizeConfig]:
    from slimserve.compression.quantize.configs import config_of

    for group_size in config_of(config).finer_group_sizes(state.model):
        config = config.model_copy(update={"group_size": group_size})
        yield config
    yield from sensitive_layers_in_float(state, config, context)


def sensitive_layers_in_float(state: ModelState, config: QuantizeConfig, context: StepContext) -> Iterator[QuantizeConfig]:
    """The most sensitive 1, 2, 4... layers one precision up: float, or int8 for int4-weight-only."""
    from slimserve.compression.quantize import quantizable_layers
    from slimserve.compression.quantize.configs import config_of

    field = config_of(config).higher_precision_field
    already = list(getattr(config, field) or [])
    kept = set(already) | set(config.keep_float or [])
    layers = [name for name in quantizable_layers(state.model, config.method) if name not in kept]
    if len(layers) < 2:
        return
    ranked = rank_by_sensitivity(state, config, context, layers)
    count = 1
    for _ in range(MAX_FLOAT_CANDIDATES):
        if count >= len(layers):
            return
        yield config.model_copy(update={field: already + ranked[:count]})
        count *= 2


def rank_by_sensitivity(state: ModelState, config: QuantizeConfig, context: StepContext, layers: list[str]) -> list[str]:
    """Layers, most sensitive first: each is quantized alone and its outputs compared with the float model's."""
    reference = context.task.outputs(state.eager(), "eval", SENSITIVITY_SAMPLES)
    damage: dict[str, float] = {}
    for index, layer in enumerate(layers):
        context.check_time_box()  # ranking quantizes the model once per layer: long for large models
        others = [name for name in layers if name != layer]
        alone = config.model_copy(update={"keep_float": list(config.keep_float or []) + others})
        outputs = context.task.outputs(quantize(state, alone, context).eager(), "eval", SENSITIVITY_SAMPLES)
        damage[layer] = output_distance(outputs, reference)
        context.reporter.update(0.3 + 0.4 * (index + 1) / len(layers), f"sensitivity of {layer}: {damage[layer]:.2e}")
    return sorted(layers, key=damage.__getitem__, reverse=True)


def output_distance(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean (1 - cosine similarity) of each sample's outputs to the reference's."""
    return float((1.0 - F.cosine_similarity(outputs.flatten(1), reference.flatten(1), dim=1)).mean())
