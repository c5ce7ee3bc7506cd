"""The distill step: train a narrower and / or shallower student to mimic the teacher.

Classifiers use Hinton's loss (KL divergence of temperature-softened outputs, weighted by `alpha`, plus
cross-entropy on the labels); embedding models learn the teacher's embeddings (cosine loss), and their
student starts from the teacher's own layers (evenly spaced ones, heads and neurons by magnitude). A decoder's
student starts from the teacher's own layers too (evenly spaced ones, grouped-query groups and MLP
neurons by magnitude) and learns the teacher's next-token distributions (Hinton's loss per token, with the
text's next token as the label), the teacher's logits computed batch by batch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

from torch import nn

from slimserve.api.steps import DistillConfig, StudentSpec
from slimserve.compression import decoder_surgery, transformer_surgery
from slimserve.compression.errors import SpecDoesNotFit
from slimserve.compression.finetune import train
from slimserve.compression.prune import is_decoder
from slimserve.compression.registry import register_relaxations, register_transform
from slimserve.compression.state import ModelState, StepContext
from slimserve.models.device import model_device


@register_transform(DistillConfig)
def distill(state: ModelState, config: DistillConfig, context: StepContext) -> ModelState:
    teacher_model = state.float_copy()
    student = build_student(state, teacher_model, config.student, f"{context.where}.student")
    student.to(model_device(teacher_model))  # a student built afresh starts on the CPU
    if context.task.metric_name == "perplexity":
        targets = context.task.teacher_forward(state.eager())
    else:
        targets = context.teacher_outputs(state)
    context.reporter.update(0.1, f"student of {sum(p.numel() for p in student.parameters())} parameters")
    train(
        student, context.task, epochs=config.epochs, learning_rate=config.optimizer.learning_rate or config.learning_rate,
        batch_size=config.batch_size, optimizer=config.optimizer, teacher_outputs=targets, temperature=config.temperature, alpha=config.alpha, seed=context.seed,
        on_epoch=lambda epoch, loss: context.reporter.update(
            0.1 + 0.8 * epoch / config.epochs, f"distillation epoch {epoch}/{config.epochs}, loss {loss:.4f}"
        ),
    )
    return ModelState.of_float(student, state.family, state.assets)


@register_relaxations(DistillConfig)
def larger_students(state: ModelState, config: DistillConfig, context: StepContext) -> Iterator[DistillConfig]:
    """Wider and deeper students, still smaller than the teacher."""
    depth = teacher_depth(state)
    student = config.student
    for _ in range(2):
        width = min(1.0, round(student.width_multiplier * 1.5, 4)) if student.width_multiplier else None
        layers = min(depth, student.num_layers + 1) if student.num_layers else None
        student = StudentSpec(width_multiplier=width, num_layers=layers)
        if _same_as_teacher(student, depth):
            return
        yield config.model_copy(update={"student": student})


def teacher_depth(state: ModelState) -> int:
    recipe = state.recipe
    if state.family.name == "minilm" or is_decoder(state.model):
        return int(recipe["num_layers"])
    return len(recipe["channels"] if "channels" in recipe else recipe["hidden"])


def build_student(state: ModelState, teacher: nn.Module, spec: StudentSpec, field: str) -> nn.Module:
    if state.family.name == "torch-export":
        raise SpecDoesNotFit(f"{field}: a torch-export program has no architecture to derive a student from")
    depth = teacher_depth(state)
    if spec.num_layers is not None and spec.num_layers > depth:
        raise SpecDoesNotFit(f"{field}.numLayers: {spec.num_layers} is more than the teacher's {depth} layers (a student must be smaller)")
    if _same_as_teacher(spec, depth):
        raise SpecDoesNotFit(f"{field}: widthMultiplier 1 and numLayers {depth} make a student as large as the teacher")
    layers = spec.num_layers or depth
    width = spec.width_multiplier or 1.0
    if state.family.name == "minilm":
        return _encoder_student(teacher, layers, width)
    if is_decoder(teacher):
        return _decoder_student(teacher, layers, width)
    key = "channels" if "channels" in state.recipe else "hidden"
    recipe = dict(state.recipe)
    recipe[key] = [max(1, round(c * width)) for c in state.recipe[key][:layers]]
    return state.family.build(recipe).train()


def _encoder_student(teacher: nn.Module, layers: int, width: float) -> nn.Module:
    student = copy.deepcopy(teacher)
    transformer_surgery.select_layers(student, transformer_surgery.evenly_spaced(len(student.layers), layers))
    if width < 1.0:
        scores = transformer_surgery.magnitude_scores(student)
        transformer_surgery.prune_encoder(student, 1.0 - width, scores, lambda name: False)
    return student


def _decoder_student(teacher: nn.Module, layers: int, width: float) -> nn.Module:
    student = copy.deepcopy(teacher)
    transformer_surgery.select_layers(student, transformer_surgery.evenly_spaced(len(student.layers), layers))
    student.config.num_layers = len(student.layers)
    if width < 1.0:
        decoder_surgery.prune_width(student, 1.0 - width, decoder_surgery.magnitude)
    return student


def _same_as_teacher(spec: StudentSpec, depth: int) -> bool:
    return (spec.width_multiplier is None or spec.width_multiplier >= 1.0) and (spec.num_layers is None or spec.num_layers >= depth)
