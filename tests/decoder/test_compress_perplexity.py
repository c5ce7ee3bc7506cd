"""The decoders' task: perplexity of held-out windows, and a budget that is a relative increase of it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from slimserve.api.compression_job import EvaluationSpec
from slimserve.compression.errors import SpecDoesNotFit
from slimserve.compression.perplexity_task import PerplexityTask

VOCAB, WINDOW = 50, 16


def _task() -> PerplexityTask:
    ids = torch.randint(0, VOCAB, (40 * WINDOW,), generator=torch.Generator().manual_seed(0)).tolist()
    return PerplexityTask.of_text(ids, WINDOW)


def test_held_out_windows_are_every_fifth_and_perplexity_is_exp_of_the_next_token_loss():
    task = _task()
    assert (task.split_size("train"), task.split_size("eval")) == (32, 8)

    def uniform(ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, VOCAB)

    def knows_the_next_token(ids: torch.Tensor) -> torch.Tensor:
        upcoming = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
        return F.one_hot(upcoming, VOCAB).float() * 30.0

    def unsure_half_the_time(ids: torch.Tensor) -> torch.Tensor:  # p = 1/2 on the right token, the rest uniform
        upcoming = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
        return F.one_hot(upcoming, VOCAB).float() * math.log(VOCAB - 1)

    assert task.score(uniform) == pytest.approx(VOCAB)
    assert task.score(knows_the_next_token) == pytest.approx(1.0, abs=1e-6)
    assert task.score(unsure_half_the_time) == pytest.approx(2.0)


def test_the_budget_is_a_relative_increase_and_lower_is_better():
    task = _task()
    assert not task.higher_is_better
    assert task.degradation(10.0, 10.2) == pytest.approx(0.02)
    assert task.degradation(10.0, 9.0) < 0  # better than the original
    assert task.budget(EvaluationSpec.model_validate({"maxRelativeIncrease": 0.02})) == 0.02
    assert task.budget(EvaluationSpec()) == 0.05  # unset: the documented default
    assert task.budget_field == "evaluation.maxRelativeIncrease"


def test_the_distillation_loss_is_zero_against_itself_and_positive_against_another_model():
    task = _task()
    batch = next(task.batches("train", 4))
    logits = torch.randn(4, WINDOW, VOCAB)
    same = task.loss(logits, batch, logits, temperature=2.0, alpha=1.0)
    other = task.loss(logits, batch, torch.randn(4, WINDOW, VOCAB), temperature=2.0, alpha=1.0)
    assert float(same) == pytest.approx(0.0, abs=1e-5) and float(other) > 0.1


def test_a_text_too_short_for_the_windows_is_refused_naming_the_dataset():
    with pytest.raises(SpecDoesNotFit, match="evaluation.dataset.uri: file:///t.txt has 40 tokens, need at least 80"):
        PerplexityTask.of_text(list(range(40)), WINDOW, source="file:///t.txt")
