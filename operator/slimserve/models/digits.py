"""The digits demo models: a small CNN and an MLP on scikit-learn's bundled 8x8 digits.

Both take the flattened image as load_digits gives it (64 values in 0..16) and return 10 logits; the
scaling to 0..1 happens inside the model so that servers and clients never need to know about it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from slimserve.artifacts.cache import cache_dir
from slimserve.models.torch_threads import torch_threads

NUM_FEATURES = 64
NUM_CLASSES = 10
SPLIT_SEED = 20240611
HELD_OUT_FRACTION = 0.2
TRAIN_EPOCHS = 25
TRAIN_SEED = 7
# The demo models train on one thread, so that their weights are the same on every machine with this torch.
TRAIN_THREADS = 1

DEFAULT_CNN_RECIPE: dict[str, Any] = {"channels": [16, 32, 64], "num_classes": NUM_CLASSES}
DEFAULT_MLP_RECIPE: dict[str, Any] = {"hidden": [128], "num_classes": NUM_CLASSES}


@dataclass(frozen=True)
class DigitsData:
    """The fixed train / held-out split: x float32 [N, 64] in 0..16, y int64 [N]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@lru_cache(maxsize=1)
def digits_data() -> DigitsData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=HELD_OUT_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return DigitsData(x_train, y_train, x_test, y_test)


class DigitsCNN(nn.Module):
    """conv-relu x2, max-pool, conv-relu, max-pool, flatten (2x2), linear; `channels` names each conv's width.

    Fewer than three channel entries give a shallower network (a distilled student with fewer layers).
    """

    def __init__(self, channels: list[int], num_classes: int = NUM_CLASSES):
        super().__init__()
        if not 1 <= len(channels) <= 3 or min(channels) < 1:
            raise ValueError(f"channels: expected 1 to 3 positive widths, got {channels}")
        layers: list[nn.Module] = []
        in_channels = 1
        for index, width in enumerate(channels):
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
            if index >= 1:
                layers.append(nn.MaxPool2d(2))
            in_channels = width
        self.features = nn.Sequential(*layers)
        # A shallower student pools down to the same 2x2 grid as the full network.
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Linear(in_channels * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x / 16.0).reshape(-1, 1, 8, 8)
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class DigitsMLP(nn.Module):
    """64 -> hidden... -> 10 with ReLU."""

    def __init__(self, hidden: list[int], num_classes: int = NUM_CLASSES):
        super().__init__()
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden: expected at least one positive width, got {hidden}")
        layers: list[nn.Module] = []
        in_features = NUM_FEATURES
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x / 16.0))


def build_cnn(recipe: dict[str, Any]) -> DigitsCNN:
    return DigitsCNN(list(recipe["channels"]), int(recipe.get("num_classes", NUM_CLASSES)))


def build_mlp(recipe: dict[str, Any]) -> DigitsMLP:
    return DigitsMLP(list(recipe["hidden"]), int(recipe.get("num_classes", NUM_CLASSES)))


def cnn_recipe(model: DigitsCNN) -> dict[str, Any]:
    """The recipe of a (possibly pruned) CNN, read from its layers' actual widths."""
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    return {"channels": [c.out_channels for c in convs], "num_classes": model.classifier.out_features}


def mlp_recipe(model: DigitsMLP) -> dict[str, Any]:
    linears = [m for m in model.features if isinstance(m, nn.Linear)]
    return {"hidden": [m.out_features for m in linears], "num_classes": model.classifier.out_features}


def train_classifier(
    model: nn.Module,
    data: DigitsData,
    *,
    epochs: int,
    seed: int = TRAIN_SEED,
    learning_rate: float = 3e-3,
    batch_size: int = 64,
) -> nn.Module:
    """Plain cross-entropy training with Adam; deterministic for a given seed."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    return model.eval()


def trained_builtin(name: str, recipe: dict[str, Any], builder) -> nn.Module:
    """A trained fp32 demo model, cached as safetensors under the cache dir keyed by a hash of its recipe."""
    key = json.dumps({"model": name, "recipe": recipe, "epochs": TRAIN_EPOCHS, "seed": TRAIN_SEED,
                      "split": SPLIT_SEED, "threads": TRAIN_THREADS}, sort_keys=True)
    path = cache_dir("models") / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
    model = builder(recipe)
    if path.is_file():
        try:
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        except Exception:  # a corrupt cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)
    torch.manual_seed(TRAIN_SEED)
    model = builder(recipe)
    with torch_threads(TRAIN_THREADS):
        train_classifier(model, digits_data(), epochs=TRAIN_EPOCHS)
    staging = path.with_name(f".{path.name}.{torch.randint(0, 1 << 30, ()).item()}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(staging))
    staging.replace(path)
    return model
