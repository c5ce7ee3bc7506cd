"""The optimizer of the user's choice for recovery fine-tuning and distillation, recorded in the report; and
L1-regularised training before magnitude pruning."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from slimserve.api.steps import DistillConfig, OptimizerSpec, PruneConfig
from slimserve.compression import compress
from slimserve.compression.finetune import train
from slimserve.compression.registry import apply_step


@pytest.mark.parametrize(
    "optimizer, label",
    [
        ({"name": "sgd", "learningRate": 0.05, "momentum": 0.9}, "sgd lr 0.05 momentum 0.9"),
        ({"name": "adam"}, "adam"),
        ({"name": "adamw", "weightDecay": 0.01}, "adamw weight decay 0.01"),
        ({"name": "rmsprop", "learningRate": 0.001}, "rmsprop lr 0.001"),
    ],
)
def test_each_optimizer_fine_tunes_the_digits_mlp_and_is_in_the_report(tmp_path, sink, make_spec, optimizer, label):
    prune = {"method": "unstructured", "amount": 0.5, "finetuneEpochs": 1, "optimizer": optimizer}
    spec = make_spec(tmp_path / "out", model="builtin://digits-mlp", steps=[{"prune": prune}], evaluation={"maxDrop": 0.2})
    compress(spec, [sink])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    kept = [c["label"] for c in report["candidates"] if c["step"] == "prune/unstructured" and c["accepted"]]
    assert kept == [f"amount 0.5, fine-tuned with {label}"]


def test_the_optimizer_named_is_the_one_that_trains(mlp_context):
    original, context = mlp_context
    weights = {}
    for name in ("sgd", "adam", "adamw", "rmsprop"):
        config = PruneConfig(method="unstructured", amount=0.5, finetune_epochs=1, optimizer=OptimizerSpec(name=name, weight_decay=0.01))
        weights[name] = apply_step(original, config, context).model.features[0].weight
    for name, tensor in weights.items():  # four optimizers, four results (adam adds decay to the gradient, adamw not)
        assert sum(torch.equal(tensor, other) for other in weights.values()) == 1, name


def test_l1_training_shrinks_the_weights_before_they_are_cut(mlp_context):
    original, context = mlp_context
    plain, penalised = original.float_copy(), original.float_copy()
    train(plain, context.task, epochs=1, learning_rate=3e-3, batch_size=64)
    hidden = penalised.features[0].weight
    train(penalised, context.task, epochs=1, learning_rate=3e-3, batch_size=64, l1=(1e-3, [hidden]))
    assert hidden.abs().sum() < 0.8 * plain.features[0].weight.abs().sum()
    config = PruneConfig(method="unstructured", amount=0.6, finetune_epochs=1, l1_penalty=1e-3)
    pruned = apply_step(original, config, context).model.features[0].weight
    assert 0.55 < float((pruned == 0).float().mean()) < 0.65  # cut to the amount, and kept cut by fine-tuning


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: PruneConfig(amount=0.5, finetune_epochs=1, l1_penalty=1e-4), "l1Penalty: needs method unstructured"),
        (lambda: PruneConfig(method="unstructured", amount=0.5, l1_penalty=1e-4), "l1Penalty: needs method unstructured and finetuneEpochs"),
        (lambda: DistillConfig.model_validate({"student": {"widthMultiplier": 0.5}, "learningRate": 0.01, "optimizer": {"learningRate": 0.1}}), "set one of them"),
        (lambda: OptimizerSpec.model_validate({"name": "lion"}), "'sgd', 'adam', 'adamw' or 'rmsprop'"),
    ],
)
def test_optimizer_settings_that_contradict_are_refused(build, message):
    with pytest.raises(ValidationError, match=message):
        build()
