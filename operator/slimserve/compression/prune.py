"""The prune step: structured (channels, heads, neurons physically removed) or unstructured (global magnitude).

Structured pruning of the CNN / MLP and of `torch.export` programs (given their layer modules back first, see
`program_surgery`) uses Torch-Pruning's dependency graph, which also shrinks every layer that consumes a pruned
channel; the transformer encoder is pruned head by head and neuron by neuron (see
`transformer_surgery`), a decoder by grouped-query group and neuron, or layer by layer with `depth` (see
`decoder_surgery`), and recovers by distillation on the unpruned decoder's logits. Unstructured pruning zeroes the smallest weights across all layers; it does not make
the model faster, but the artifact stores mostly-zero tensors packed (see `slimserve.artifacts.sparse`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import nn

from slimserve.api.steps import DistillConfig, PruneConfig
from slimserve.compression import program_surgery, transformer_surgery
from slimserve.compression.errors import SpecDoesNotFit
from slimserve.compression.finetune import RECOVERY_LEARNING_RATE, apply_masks, train
from slimserve.compression.registry import register_relaxations, register_transform
from slimserve.compression.state import ModelState, StepContext
from slimserve.models.exported import is_program

RECOVERY_BATCH = {"accuracy": 32, "cosine": 32, "perplexity": 16}
DEPTH_BATCHES = 4  # batches of task text whose hidden states rank a decoder's layers
IMPORTANCE_BATCHES = 4  # batches of task data whose gradients score channels for taylor importance
RECOVERY_TEMPERATURE = DistillConfig.model_fields["temperature"].default
RECOVERY_DISTILLATION_WEIGHT = DistillConfig.model_fields["alpha"].default
_GENTLER = (0.75, 0.5, 0.25)  # the budget search retries at these fractions of the asked amount


@register_transform(PruneConfig)
def prune(state: ModelState, config: PruneConfig, context: StepContext) -> ModelState:
    model = state.float_copy()
    keep = list(config.keep_layers or [])
    _check_module_names(model, keep, f"{context.where}.keepLayers")
    masks: dict[str, torch.Tensor] = {}
    channels = config.method == "structured" and state.family.name != "minilm" and not is_decoder(model)
    if config.rounds > 1 and not channels:
        raise SpecDoesNotFit(
            f"{context.where}.rounds: pruning in rounds is for structured channel pruning (CNNs, MLPs, exported "
            f"programs); this {state.family.name} model is pruned in one round"
        )
    if is_decoder(model):
        _prune_decoder(model, config, keep, context)
    elif config.method == "depth":
        raise SpecDoesNotFit(f"{context.where}.method: depth pruning is for decoders; this is a {state.family.name} model")
    elif channels:
        def recover(round_number: int) -> None:
            _fine_tune(model, state, config, context, masks, phase=_recovery_phase(round_number, config.rounds),
                       share=(round_number - 1, config.rounds))

        _prune_channels(model, config, keep, context, recover if config.finetune_epochs else None)
    elif config.method == "structured":
        _prune_encoder(model, config, keep, context)
    else:
        if config.l1_penalty:  # drive the weights towards zero first, so fewer that matter fall under the cut
            weights = list(_prunable_weights(model, keep).values())
            _fine_tune(model, state, config, context, state.masks, l1=(config.l1_penalty, weights), phase="L1 training")
        masks = magnitude_masks(model, config.amount, keep, state.masks)
        apply_masks(model, masks)
    if config.finetune_epochs and not channels:  # channel pruning recovers after each of its rounds
        _fine_tune(model, state, config, context, masks, phase="recovery fine-tune")
    assets = state.assets
    if config.method == "structured":  # a program's structure is its assets: exported again, pruned
        model, assets = state.family.restructured(model, state.assets)
    return ModelState.of_float(model, state.family, assets, masks)


def _recovery_phase(round_number: int, rounds: int) -> str:
    return f"round {round_number}/{rounds} recovery" if rounds > 1 else "recovery fine-tune"


def _fine_tune(
    model, state: ModelState, config: PruneConfig, context: StepContext, masks, *, phase: str, l1=None,
    share: tuple[int, int] = (0, 1),
) -> None:
    metric = context.task.metric_name
    # Classifiers recover on their labels and the original model's logits (Hinton's loss, at the distill
    # step's default temperature and weight: the soft outputs carry how the original ranks the other classes);
    # embedding models on the original model's embeddings; decoders on the unpruned model's next-token
    # distributions.
    teacher = context.teacher_outputs(context.original) if metric in ("accuracy", "cosine") else None
    if metric == "perplexity":
        teacher = context.task.teacher_forward(state.eager())
    alpha = {"accuracy": RECOVERY_DISTILLATION_WEIGHT, "perplexity": 1.0}.get(metric, 0.0)
    temperature = RECOVERY_TEMPERATURE if metric == "accuracy" else 1.0
    done, parts = share  # this recovery's place among the step's (one per round)
    epochs = config.finetune_epochs
    # A classifier's step size anneals to zero (cosine), so that its last epochs settle instead of ending
    # wherever the last full-size step left the weights.
    train(
        model, context.task, epochs=epochs,
        learning_rate=config.optimizer.learning_rate or RECOVERY_LEARNING_RATE[metric], optimizer=config.optimizer,
        batch_size=RECOVERY_BATCH[metric], teacher_outputs=teacher, temperature=temperature, alpha=alpha,
        masks=masks, l1=l1, cosine=metric == "accuracy", seed=context.seed,
        on_epoch=lambda epoch, loss: context.reporter.update(
            0.2 + 0.7 * (done + epoch / epochs) / parts, f"{phase} epoch {epoch}/{epochs}, loss {loss:.4f}"
        ),
    )


@register_relaxations(PruneConfig)
def smaller_amounts(state: ModelState, config: PruneConfig, context: StepContext) -> Iterator[PruneConfig]:
    for fraction in _GENTLER:
        yield config.model_copy(update={"amount": round(config.amount * fraction, 4)})


def _prune_channels(model: nn.Module, config: PruneConfig, keep: list[str], context: StepContext, recover=None) -> None:
    """Torch-Pruning's dependency graph removes `config.amount` of the channels in `config.rounds` equal shares,
    each scored anew on the model the last round's recovery (`recover`) left: what the lost channels did has
    been taken over by the rest before the next ones are chosen."""
    import torch_pruning as tp

    example = context.task.sample_inputs(8)[0]
    if is_program(model):
        output = program_surgery.output_layer(program_surgery.with_layer_modules(model))
    else:
        output = model.classifier
    ignored = [module for name, module in model.named_modules() if name and (_kept(name, keep) or module is output)]
    if config.importance == "taylor":
        importance = tp.importance.GroupTaylorImportance()
    else:
        importance = tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=example, importance=importance, pruning_ratio=config.amount, ignored_layers=ignored,
        iterative_steps=config.rounds,
    )
    for round_number in range(1, config.rounds + 1):
        if config.importance == "taylor":
            _accumulate_gradients(model, context)
        pruner.step()
        model.zero_grad(set_to_none=True)
        if recover is not None:
            recover(round_number)


def is_decoder(model: nn.Module) -> bool:
    from slimserve.models.decoder import DecoderLM

    return isinstance(model, DecoderLM)


def _prune_decoder(model: nn.Module, config: PruneConfig, keep: list[str], context: StepContext) -> None:
    from slimserve.compression import decoder_surgery

    if config.method == "unstructured":
        raise SpecDoesNotFit(f"{context.where}.method: decoders are pruned structured or depth, not unstructured")
    if config.method == "depth":
        batches = [batch.inputs for batch in itertools.islice(context.task.batches("train", 8), DEPTH_BATCHES)]
        influence = decoder_surgery.block_influence(model, batches)
        for index in range(len(model.layers)):
            if _kept(f"layers.{index}", keep):
                influence[index] = float("inf")
        removed = decoder_surgery.prune_depth(model, config.amount, influence)
        context.reporter.update(0.2, f"removed layers {removed}")
        return
    if keep:
        raise SpecDoesNotFit(
            f"{context.where}.keepLayers: a decoder's layers share one head count and MLP width, so structured "
            "pruning treats them alike; keepLayers applies to depth pruning"
        )
    if config.importance == "taylor":
        _accumulate_gradients(model, context)
    decoder_surgery.prune_width(model, config.amount, decoder_surgery.taylor if config.importance == "taylor" else decoder_surgery.magnitude)
    model.zero_grad(set_to_none=True)
    context.reporter.update(0.2, f"{model.config.num_kv_heads} key/value groups, MLP width {model.config.intermediate_size} per layer")


def _prune_encoder(model: nn.Module, config: PruneConfig, keep: list[str], context: StepContext) -> None:
    if config.importance == "taylor":
        _accumulate_gradients(model, context, teacher=context.teacher_outputs(context.original))
        scores = transformer_surgery.taylor_scores(model)
    else:
        scores = transformer_surgery.magnitude_scores(model)
    model.zero_grad(set_to_none=True)
    transformer_surgery.prune_encoder(model, config.amount, scores, lambda name: _kept(name, keep))


def _accumulate_gradients(model: nn.Module, context: StepContext, teacher: torch.Tensor | None = None) -> None:
    """Gradients of the task loss over a few training batches (for taylor importance)."""
    model.zero_grad(set_to_none=True)
    for count, batch in enumerate(context.task.batches("train", 32)):
        if count == IMPORTANCE_BATCHES:
            break
        target = teacher[batch.index] if teacher is not None else None
        context.task.loss(model(*batch.inputs), batch, target, 1.0, 0.0).backward()


def magnitude_masks(model: nn.Module, amount: float, keep: list[str], previous: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Masks zeroing the `amount` fraction of smallest-magnitude weights over all prunable layers together."""
    weights = _prunable_weights(model, keep)
    if not weights:
        raise SpecDoesNotFit("prune: no prunable layer left (all are kept or the output layer)")
    magnitudes = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
    count = int(amount * magnitudes.numel())
    if count == 0:
        return {name: torch.ones_like(w) for name, w in weights.items()}
    threshold = torch.kthvalue(magnitudes, count).values
    masks = {name: (w.detach().abs() > threshold).to(w.dtype) for name, w in weights.items()}
    for name, mask in previous.items():  # weights pruned by an earlier step stay pruned
        if name in masks:
            masks[name] *= mask
    return masks


def _prunable_weights(model: nn.Module, keep: list[str]) -> dict[str, torch.Tensor]:
    """Weights of Linear / Conv layers, the output layer excepted; for a program (no layer modules left),
    every weight matrix or kernel but the last."""
    output_layer = getattr(model, "classifier", None)
    layers = {
        f"{name}.weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d)) and module is not output_layer and not _kept(name, keep)
    }
    if layers or any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules()):
        return layers
    matrices = [(n, p) for n, p in model.named_parameters() if n.endswith("weight") and p.ndim >= 2]
    return {name: p for name, p in matrices[:-1] if not _kept(name.rsplit(".", 1)[0], keep)}


def _kept(name: str, keep: list[str]) -> bool:
    return any(name == k or name.startswith(k + ".") for k in keep)


def _check_module_names(model: nn.Module, names: list[str], field: str) -> None:
    known = {name for name, _ in model.named_modules() if name}
    unknown = [name for name in names if name not in known]
    if unknown:
        examples = ", ".join(sorted(known, key=len)[:8])
        raise SpecDoesNotFit(f"{field}: no module named {unknown[0]!r} in this model (modules include {examples})")
