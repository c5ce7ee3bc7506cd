"""builtin://digits-resnet: torchvision's ResNet-18 at an eighth of its width, trained on the digits upscaled to 32x32.

It takes the flattened 8x8 image as the other digits models do (64 values in 0..16) and scales and upscales it
inside, so clients, the builtin://digits data and the compression engine treat it like them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch import nn

from slimserve.models import digits
from slimserve.models.vision import build_vision, layer_widths, narrow_widths

IMAGE_SIZE = 32
_BASE = {"architecture": "resnet18", "num_classes": digits.NUM_CLASSES, "input_size": [1, IMAGE_SIZE, IMAGE_SIZE]}


class DigitsResNet(nn.Module):
    def __init__(self, layers: dict[str, list[int]], num_classes: int):
        super().__init__()
        self.net = build_vision({**_BASE, "num_classes": num_classes, "layers": layers})

    @property
    def classifier(self) -> nn.Module:  # what structured pruning leaves whole (the logits)
        return self.net.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = (x / 16.0).reshape(-1, 1, 8, 8)
        upscaled = nn.functional.interpolate(image, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        return self.net(upscaled)


@lru_cache(maxsize=1)
def default_recipe() -> dict[str, Any]:
    return {"layers": narrow_widths(_BASE, 8), "num_classes": digits.NUM_CLASSES}


def build_resnet(recipe: dict[str, Any]) -> DigitsResNet:
    return DigitsResNet(dict(recipe["layers"]), int(recipe.get("num_classes", digits.NUM_CLASSES)))


def resnet_recipe(model: DigitsResNet) -> dict[str, Any]:
    """The recipe of a (possibly pruned) model, read from its layers' actual widths."""
    return {"layers": layer_widths(model.net), "num_classes": model.classifier.out_features}
