"""The prune step: structured pruning really removes channels / heads / neurons; unstructured shrinks the artifact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from slimserve.api.steps import PruneConfig
from slimserve.compression import compress
from slimserve.compression.errors import SpecDoesNotFit
from slimserve.compression.finetune import train
from slimserve.compression.registry import apply_step
from slimserve.models.digits import digits_data
from slimserve.models.exported import load_program_module


def test_structured_prune_removes_cnn_channels(cnn_context, digits_cnn):
    original, context = cnn_context
    pruned = apply_step(original, PruneConfig(amount=0.5), context)
    assert pruned.recipe["channels"] == [8, 16, 32]
    assert pruned.parameters < 0.3 * original.parameters
    assert pruned.size_bytes() < 0.3 * original.size_bytes()
    assert original.recipe["channels"] == [16, 32, 64]  # the input state is never modified
    rebuilt = pruned.family.build(pruned.recipe)
    rebuilt.load_state_dict(pruned.model.state_dict())  # the recipe rebuilds the pruned shapes exactly
    rows = context.task.sample_inputs(4)
    assert torch.equal(rebuilt(*rows), pruned.model(*rows))


def test_kept_layers_keep_their_channels_and_unknown_names_are_refused(cnn_context):
    original, context = cnn_context
    pruned = apply_step(original, PruneConfig(amount=0.5, keep_layers=["features.0"]), context)
    assert pruned.recipe["channels"][0] == 16 and pruned.recipe["channels"][2] == 32
    with pytest.raises(SpecDoesNotFit, match=r"keepLayers: no module named 'conv9'"):
        apply_step(original, PruneConfig(amount=0.5, keep_layers=["conv9"]), context)


def test_taylor_importance_prunes_with_gradients(cnn_context):
    original, context = cnn_context
    magnitude = apply_step(original, PruneConfig(amount=0.5), context)
    taylor = apply_step(original, PruneConfig(amount=0.5, importance="taylor"), context)
    assert taylor.recipe == magnitude.recipe
    first_conv = lambda state: state.model.features[0].weight  # noqa: E731
    assert not torch.equal(first_conv(taylor), first_conv(magnitude))  # other channels were chosen


def test_rounds_prune_a_share_recover_and_prune_again(cnn_context, monkeypatch):
    original, context = cnn_context
    from slimserve.compression import prune as prune_module

    widths_at_recovery, scored_on = [], []
    real_train, real_gradients = prune_module.train, prune_module._accumulate_gradients

    def recording_train(model, *args, **kwargs):
        widths_at_recovery.append([m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)])
        return real_train(model, *args, **kwargs)

    def recording_gradients(model, *args, **kwargs):
        scored_on.append([m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)])
        return real_gradients(model, *args, **kwargs)

    monkeypatch.setattr(prune_module, "train", recording_train)
    monkeypatch.setattr(prune_module, "_accumulate_gradients", recording_gradients)
    config = PruneConfig(amount=0.5, rounds=2, finetune_epochs=1, importance="taylor")
    pruned = apply_step(original, config, context)
    # a quarter of each layer's channels, recovery, the next quarter scored on the recovered model, recovery
    assert scored_on == [[16, 32, 64], [12, 24, 48]]
    assert widths_at_recovery == [[12, 24, 48], [8, 16, 32]]
    assert pruned.recipe["channels"] == [8, 16, 32]


def test_rounds_need_structured_channel_pruning(minilm_context):
    with pytest.raises(ValueError, match="rounds: pruning in rounds needs method structured"):
        PruneConfig(method="unstructured", amount=0.5, rounds=2)
    encoder, context = minilm_context
    with pytest.raises(SpecDoesNotFit, match=r"rounds: pruning in rounds is for structured channel pruning"):
        apply_step(encoder, PruneConfig(amount=0.5, rounds=2), context)


def test_the_report_names_the_importance_and_the_rounds(tmp_path, sink, make_spec):
    prune = {"method": "structured", "amount": 0.5, "importance": "taylor", "rounds": 2, "finetuneEpochs": 1}
    spec = make_spec(tmp_path / "out", model="builtin://digits-mlp", steps=[{"prune": prune}], evaluation={"maxDrop": 0.5})
    compress(spec, [sink])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    kept = [c["label"] for c in report["candidates"] if c["step"] == "prune/structured" and c["accepted"]]
    assert kept == ["amount 0.5, taylor importance, in 2 rounds, fine-tuned with adam"]


class ResidualNet(nn.Module):
    """A stem and one residual block on 1x8x8 images: its sum needs equal widths on both sides."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.conv1, self.conv2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(image)
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))) + x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_an_exported_program_is_pruned_in_rounds(tmp_path, sink, make_spec):
    data = digits_data()
    as_images = lambda rows: (rows / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)  # noqa: E731
    example = torch.from_numpy(as_images(data.x_train[:4]))
    torch.manual_seed(0)
    program = torch.export.export(ResidualNet().eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "net.pt2"))
    np.savez(tmp_path / "digits.npz", x_train=as_images(data.x_train), y_train=data.y_train, x_test=as_images(data.x_test), y_test=data.y_test)
    prune = {"method": "structured", "amount": 0.5, "rounds": 2, "finetuneEpochs": 1}
    evaluation = {"maxDrop": 1.0, "dataset": {"uri": f"file://{tmp_path / 'digits.npz'}"}}
    spec = make_spec(tmp_path / "out", model=f"file://{tmp_path / 'net.pt2'}", steps=[{"prune": prune}], evaluation=evaluation)
    compress(spec, [sink])
    assert not sink.errors
    messages = [str(getattr(event, "message", "")) for event in sink.events]
    assert any("round 1/2 recovery epoch 1/1" in m for m in messages) and any("round 2/2 recovery epoch 1/1" in m for m in messages)
    pruned = load_program_module(tmp_path / "out" / "program.pt2")
    widths = [p.shape[0] for name, p in pruned.named_parameters() if p.ndim == 4]
    assert widths == [4, 4, 4]  # half of each convolution's channels, the residual sum's widths still equal
    assert pruned(example).shape == (4, 10)


def test_recovery_fine_tune_regains_accuracy(cnn_context):
    original, context = cnn_context
    untuned = context.task.score(apply_step(original, PruneConfig(amount=0.7), context).eager())
    tuned = context.task.score(apply_step(original, PruneConfig(amount=0.7, finetune_epochs=3), context).eager())
    assert tuned > untuned + 0.1
    assert tuned > 0.85


def test_classifier_recovery_learns_the_original_models_logits_and_labels(cnn_context, monkeypatch):
    original, context = cnn_context
    task = context.task
    expected = task.outputs(original.eager(), "train")
    seen = []
    real_loss = task.loss

    def recording_loss(output, batch, teacher, temperature, alpha):
        seen.append((batch.index.clone(), teacher, temperature, alpha))
        return real_loss(output, batch, teacher, temperature, alpha)

    monkeypatch.setattr(task, "loss", recording_loss)
    apply_step(original, PruneConfig(amount=0.5, finetune_epochs=1), context)
    assert seen
    for index, teacher, temperature, alpha in seen:
        assert torch.equal(teacher, expected[index])  # the unpruned model's logits for these very rows
        assert 0.0 < alpha < 1.0 and temperature > 1.0  # soft targets and the labels both count


def test_training_anneals_the_step_size_to_zero_when_asked(cnn_context):
    original, context = cnn_context
    rates = []
    hook = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: rates.append(optimizer.param_groups[0]["lr"])
    )
    try:
        train(original.float_copy(), context.task, epochs=2, learning_rate=0.01, batch_size=64, cosine=True)
        cosine = list(rates)
        rates.clear()
        train(original.float_copy(), context.task, epochs=2, learning_rate=0.01, batch_size=64)
    finally:
        hook.remove()
    assert cosine[0] == pytest.approx(0.01)
    assert all(later < earlier for earlier, later in zip(cosine, cosine[1:]))
    assert cosine[-1] < 0.0005
    assert rates == [0.01] * len(cosine)  # without it the step size stays as given


def test_unstructured_prune_zeroes_weights_and_packs_them(mlp_context):
    original, context = mlp_context
    pruned = apply_step(original, PruneConfig(method="unstructured", amount=0.7), context)
    hidden = pruned.model.features[0].weight
    assert 0.6 < float((hidden == 0).float().mean()) < 0.8
    assert torch.count_nonzero(pruned.model.classifier.weight) == pruned.model.classifier.weight.numel()  # output layer kept
    assert pruned.parameters == original.parameters  # same shapes: only the artifact gets smaller
    assert pruned.size_bytes() < 0.6 * original.size_bytes()


def test_structured_prune_removes_transformer_heads_and_neurons(minilm_context):
    original, context = minilm_context
    pruned = apply_step(original, PruneConfig(amount=0.25), context)
    assert pruned.recipe["num_heads"] == [9] * 6
    assert pruned.recipe["intermediate_sizes"] == [1152] * 6
    assert pruned.model.layers[0].attention.query.out_features == 9 * 32
    assert pruned.parameters < original.parameters - 2_500_000
    batch = context.task.sample_inputs(4)
    rebuilt = pruned.family.build(pruned.recipe)
    rebuilt.load_state_dict(pruned.model.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(*batch), pruned.model(*batch))
    assert context.task.score(pruned.eager()) > 0.5  # still an embedding model, not noise
