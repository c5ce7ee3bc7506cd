"""The training loop shared by recovery fine-tuning (after pruning) and distillation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from slimserve.api.steps import OptimizerSpec
from slimserve.compression.tasks import Batch, Task
from slimserve.models.device import model_device
from slimserve.quant.base import set_training

# Step sizes for recovery fine-tuning: small for pretrained transformers, larger for small CNNs / MLPs.
RECOVERY_LEARNING_RATE = {"accuracy": 3e-3, "cosine": 2e-4, "perplexity": 5e-4}


def build_optimizer(parameters, spec: OptimizerSpec, learning_rate: float) -> torch.optim.Optimizer:
    """torch.optim's optimizer `spec` names, at `learning_rate` (the caller resolves the spec's own first)."""
    decay = spec.weight_decay
    if spec.name == "sgd":
        return torch.optim.SGD(parameters, lr=learning_rate, momentum=spec.momentum, weight_decay=decay)
    if spec.name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=learning_rate, momentum=spec.momentum, weight_decay=decay)
    if spec.name == "adamw":
        return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=decay)
    return torch.optim.Adam(parameters, lr=learning_rate, weight_decay=decay)


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights again (after an optimizer step moved them)."""
    with torch.no_grad():
        parameters = dict(model.named_parameters())
        for name, mask in masks.items():
            parameters[name].mul_(mask)


def train(
    model: nn.Module,
    task: Task,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    teacher_outputs: torch.Tensor | Callable[[Batch], torch.Tensor] | None = None,
    temperature: float = 1.0,
    alpha: float = 0.0,
    masks: dict[str, torch.Tensor] | None = None,
    optimizer: OptimizerSpec | None = None,
    l1: tuple[float, list[torch.Tensor]] | None = None,
    cosine: bool = False,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """`optimizer` (default Adam) over the training split; the loss is the task's (labels and/or the teacher's
    outputs), plus `l1`'s penalty times the L1 norm of its weights when given; with `cosine` the step size anneals
    from `learning_rate` to zero over the run, batch by batch. Runs where the model is: the
    task's batches come there, the teacher's outputs are moved there once. `teacher_outputs` is a tensor indexed
    by the batches' positions, or a function computing a batch's (for outputs too large to keep, a decoder's
    logits)."""
    generator = torch.Generator().manual_seed(seed)
    step = build_optimizer(model.parameters(), optimizer or OptimizerSpec(), learning_rate)
    batches_per_epoch = -(-task.split_size("train") // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(step, epochs * batches_per_epoch) if cosine else None
    if isinstance(teacher_outputs, torch.Tensor):
        teacher_outputs = teacher_outputs.to(model_device(model))
    set_training(model, True)
    try:
        for epoch in range(epochs):
            total, count = 0.0, 0
            for batch in task.batches("train", batch_size, generator):
                teacher = _teacher_of(teacher_outputs, batch)
                loss = task.loss(model(*batch.inputs), batch, teacher, temperature, alpha)
                if l1 is not None:
                    loss = loss + l1[0] * sum(weight.abs().sum() for weight in l1[1])
                step.zero_grad(set_to_none=True)
                loss.backward()
                step.step()
                if schedule is not None:
                    schedule.step()
                if masks:
                    apply_masks(model, masks)
                total += float(loss.detach()) * len(batch.index)
                count += len(batch.index)
            if on_epoch is not None:
                on_epoch(epoch + 1, total / max(count, 1))
    finally:
        set_training(model, False)
    return model


def _teacher_of(teacher_outputs: torch.Tensor | Callable[[Batch], torch.Tensor] | None, batch: Batch) -> torch.Tensor | None:
    if teacher_outputs is None:
        return None
    return teacher_outputs(batch) if callable(teacher_outputs) else teacher_outputs[batch.index]
