"""`torch.export` programs with image inputs: N-d, several inputs, a dynamic batch; the OIP signature read from
the program."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from slimserve.artifacts import save_artifact
from slimserve.models import load_servable
from slimserve.models.errors import ModelLoadError
from slimserve.models.loading import load_model


class ResidualCNN(nn.Module):
    def __init__(self, extra_features: int = 0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Linear(8 + extra_features, 5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(image))

    def pooled(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(image)
        return torch.relu(x + self.block(x)).mean(dim=(2, 3))


class ImageAndFeatures(ResidualCNN):
    def __init__(self):
        super().__init__(extra_features=4)

    def forward(self, image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.pooled(image), features], dim=1))


def exported(tmp_path, model: nn.Module, examples: tuple[torch.Tensor, ...], dynamic: bool = True):
    batch = torch.export.Dim("batch")
    shapes = tuple({0: batch} for _ in examples) if dynamic else None
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model.eval(), examples, dynamic_shapes=shapes), str(path))
    return path


def served(tmp_path, path):
    loaded = load_model(f"file://{path}")
    uri = f"file://{tmp_path / 'artifact'}"
    save_artifact(uri, family=loaded.family.name, recipe=loaded.recipe, tensors=dict(loaded.model.state_dict()),
                  extra_files=loaded.family.asset_files(loaded.assets), source=loaded.source)
    return load_servable(uri)


def test_a_residual_cnn_on_images_is_served_with_its_signature(tmp_path):
    torch.manual_seed(0)
    model = ResidualCNN()
    servable = served(tmp_path, exported(tmp_path, model, (torch.rand(2, 3, 32, 32),)))

    assert [(s.name, s.datatype, s.shape) for s in servable.info.inputs] == [("input", "FP32", (-1, 3, 32, 32))]
    images = torch.rand(5, 3, 32, 32)
    with torch.inference_mode():
        expected = model(images).numpy()
    answer = servable.predict({"input": images.numpy()})
    np.testing.assert_allclose(answer["logits"], expected, rtol=1e-5, atol=1e-6)
    assert answer["label"].tolist() == expected.argmax(axis=1).tolist()


def test_a_program_of_several_inputs_takes_each_by_name(tmp_path):
    torch.manual_seed(0)
    model = ImageAndFeatures()
    servable = served(tmp_path, exported(tmp_path, model, (torch.rand(2, 3, 16, 16), torch.rand(2, 4))))

    assert [(s.name, s.shape) for s in servable.info.inputs] == [("image", (-1, 3, 16, 16)), ("features", (-1, 4))]
    image, extra = torch.rand(3, 3, 16, 16), torch.rand(3, 4)
    with torch.inference_mode():
        expected = model(image, extra).numpy()
    answer = servable.predict({"image": image.numpy(), "features": extra.numpy()})
    np.testing.assert_allclose(answer["logits"], expected, rtol=1e-5, atol=1e-6)


def test_a_program_exported_for_one_batch_size_is_refused(tmp_path):
    path = exported(tmp_path, ResidualCNN(), (torch.rand(4, 3, 16, 16),), dynamic=False)
    with pytest.raises(ModelLoadError, match="refused a batch of 2 \\(export it with a dynamic batch dimension\\)"):
        load_model(f"file://{path}")
