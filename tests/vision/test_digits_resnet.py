"""builtin://digits-resnet: a torchvision ResNet trained on the digits upscaled to 32x32, pruned channel-wise with its
residual connections kept consistent, and rebuilt from the recipe its artifact records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from serving_helpers import compress  # noqa: E402

from slimserve.artifacts import load_artifact  # noqa: E402
from slimserve.models import digits, load_servable  # noqa: E402
from slimserve.models.loading import load_builtin  # noqa: E402


def test_digits_resnet_is_a_trained_resnet_on_32x32_images():
    loaded = load_builtin("builtin://digits-resnet")
    data = digits.digits_data()
    with torch.inference_mode():
        accuracy = (loaded.model(torch.from_numpy(data.x_test)).argmax(1).numpy() == data.y_test).mean()
    assert accuracy >= 0.95
    assert type(loaded.model.net).__name__ == "ResNet" and loaded.model.net.conv1.in_channels == 1


def test_structured_pruning_keeps_the_residual_connections_and_the_server_rebuilds_it(tmp_path):
    uri = f"file://{tmp_path / 'pruned'}"
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "model: {uri: 'builtin://digits-resnet'}\n"
        "steps: [{prune: {method: structured, amount: 0.5}}]\n"
        "evaluation: {metric: accuracy, maxDrop: 0.5, threads: 1}\n"
        f"output: {{uri: '{uri}'}}\n"
    )
    compress(spec)

    layers = load_artifact(uri).manifest.recipe["layers"]
    original = load_builtin("builtin://digits-resnet").recipe["layers"]
    assert layers["layer1.0.conv1"][1] < original["layer1.0.conv1"][1]
    # What a block adds to its input has the input's width: the residual sums still line up.
    for block in ("layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"):
        assert layers[f"{block}.conv2"][1] == layers[f"{block}.conv1"][0]
    servable = load_servable(uri)
    rows = digits.digits_data().x_test[:16]
    answer = servable.predict({"input": rows})
    assert answer["logits"].shape == (16, 10) and np.isfinite(answer["logits"]).all()
    assert json.loads((tmp_path / "pruned" / "manifest.json").read_text())["family"] == "digits-resnet"
