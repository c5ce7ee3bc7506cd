"""The distill step: smaller students trained on the teacher's outputs; students larger than the teacher refused."""

from __future__ import annotations

import pytest
import torch

from slimserve.api.steps import DistillConfig, StudentSpec
from slimserve.compression.distill import build_student
from slimserve.compression.errors import SpecDoesNotFit
from slimserve.compression.registry import apply_step


def test_narrow_student_learns_from_the_teacher(cnn_context):
    original, context = cnn_context
    config = DistillConfig(student=StudentSpec(width_multiplier=0.25), epochs=12, temperature=4.0, alpha=0.7, learning_rate=0.01)
    student = apply_step(original, config, context)
    assert student.recipe["channels"] == [4, 8, 16]
    assert student.parameters * 10 < original.parameters
    assert context.task.score(student.eager()) > 0.9


def test_shallow_student_has_fewer_layers(cnn_context):
    original, context = cnn_context
    config = DistillConfig(student=StudentSpec(num_layers=2, width_multiplier=0.5), epochs=1)
    student = apply_step(original, config, context)
    assert student.recipe["channels"] == [8, 16]


@pytest.mark.parametrize(
    "student, message",
    [
        (StudentSpec(num_layers=5), r"spec.steps\[0\].distill.student.numLayers: 5 is more than the teacher's 3 layers"),
        (StudentSpec(width_multiplier=1.0), r"spec.steps\[0\].distill.student: widthMultiplier 1 and numLayers 3"),
        (StudentSpec(width_multiplier=1.0, num_layers=3), "as large as the teacher"),
    ],
)
def test_student_not_smaller_than_teacher_is_refused(cnn_context, student, message):
    original, context = cnn_context
    context.where = "spec.steps[0].distill"
    with pytest.raises(SpecDoesNotFit, match=message):
        apply_step(original, DistillConfig(student=student), context)


def test_transformer_student_starts_from_the_teachers_layers(minilm_context):
    original, _ = minilm_context
    teacher = original.model
    student = build_student(original, teacher, StudentSpec(num_layers=2, width_multiplier=0.5), "student")
    assert len(student.layers) == 2
    assert [layer.attention.num_heads for layer in student.layers] == [6, 6]
    # Layer 0 and the last layer are kept; each head kept is a slice of the teacher's weights.
    kept_rows = student.layers[1].attention.query.weight
    teacher_rows = teacher.layers[5].attention.query.weight.reshape(12, 32, -1)
    assert any(torch.equal(kept_rows[:32], teacher_rows[h]) for h in range(12))
    assert torch.equal(student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)


@pytest.mark.slow
def test_transformer_student_distills_on_embeddings(minilm_context):
    original, context = minilm_context
    config = DistillConfig(student=StudentSpec(num_layers=3), epochs=1, learning_rate=1e-4, batch_size=32)
    student = apply_step(original, config, context)
    assert student.recipe["num_layers"] == 3
    assert context.task.score(student.eager()) > 0.7
