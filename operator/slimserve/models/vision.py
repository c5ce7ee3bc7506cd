"""Image classifiers: torchvision's ResNet, VGG, GoogLeNet/Inception and MobileNet architectures with the user's own
weights, and the preprocessing that turns encoded JPEG/PNG bytes into their input tensors.

A user's model is a directory holding `vision.json` (architecture, num_classes, input_size, optional
preprocessing) and `model.safetensors`. The architecture is built without weights (none are downloaded) on the
meta device, each convolution, batch norm and linear layer is given the width its weights have (a narrow or
pruned model), and only then are the tensors allocated. The recipe records every such width, so an artifact
rebuilds the same shapes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimserve.models.servable import ModelInfo, TensorSpec
from slimserve.models.validation import input_array

CONFIG_FILE = "vision.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_MAX_PIXELS = 4096 * 4096  # an encoded image claiming more is refused before it is decoded

# Constructor options beside num_classes: no auxiliary heads (they only train), no costly init (weights are loaded).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "resnet18": {}, "resnet34": {}, "resnet50": {}, "resnet101": {},
    "vgg11": {}, "vgg11_bn": {}, "vgg16": {}, "vgg16_bn": {},
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
    "mobilenet_v2": {}, "mobilenet_v3_small": {}, "mobilenet_v3_large": {},
}
_SIZED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def _check_recipe(recipe: dict[str, Any]) -> tuple[str, int, list[int]]:
    architecture = recipe.get("architecture")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture: {architecture!r} is not one of {', '.join(sorted(ARCHITECTURES))}")
    classes = recipe.get("num_classes")
    if not isinstance(classes, int) or classes < 1:
        raise ValueError(f"num_classes: expected a positive integer, got {classes!r}")
    size = recipe.get("input_size")
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(d, int) and d > 0 for d in size)):
        raise ValueError(f"input_size: expected [channels, height, width], got {size!r}")
    return architecture, classes, size


def build_vision(recipe: dict[str, Any]) -> nn.Module:
    """A freshly initialised classifier of the recipe's architecture and layer widths, in eval mode."""
    import torchvision

    architecture, classes, size = _check_recipe(recipe)
    with torch.device("meta"):
        model = torchvision.models.get_model(architecture, weights=None, num_classes=classes, **ARCHITECTURES[architecture])
        first = _first_conv_name(model)
        if model.get_submodule(first).in_channels != size[0]:  # torchvision's architectures take RGB
            _resize_layer(model, first, [size[0], model.get_submodule(first).out_channels])
        for name, shape in (recipe.get("layers") or {}).items():
            _resize_layer(model, name, shape)
    model.to_empty(device="cpu")
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    # What the module's shapes cannot tell: kept on it, as MiniLM keeps its config, for `vision_recipe`.
    model.vision_base = {key: value for key, value in recipe.items() if key != "layers"}
    return model.eval()


def _resize_layer(model: nn.Module, name: str, shape: list[int]) -> None:
    try:
        old = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"layers: {name!r} is not a layer of this architecture") from None
    if isinstance(old, nn.Conv2d) and len(shape) == 2:
        depthwise = old.groups > 1 and old.groups == old.in_channels
        new: nn.Module = nn.Conv2d(
            shape[0], shape[1], old.kernel_size, old.stride, old.padding, old.dilation,
            groups=shape[0] if depthwise else old.groups, bias=old.bias is not None,
        )
    elif isinstance(old, nn.Linear) and len(shape) == 2:
        new = nn.Linear(shape[0], shape[1], bias=old.bias is not None)
    elif isinstance(old, nn.BatchNorm2d) and len(shape) == 1:
        new = nn.BatchNorm2d(shape[0], old.eps, old.momentum, old.affine, old.track_running_stats)
    else:
        raise ValueError(f"layers: {name!r} is a {type(old).__name__}; cannot give it the shape {shape}")
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """Every convolution's and linear layer's [in, out] and every batch norm's [features]."""
    widths: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            widths[name] = [module.in_channels, module.out_channels]
        elif isinstance(module, nn.Linear):
            widths[name] = [module.in_features, module.out_features]
        elif isinstance(module, nn.BatchNorm2d):
            widths[name] = [module.num_features]
    return widths


def narrow_widths(recipe: dict[str, Any], divisor: int) -> dict[str, list[int]]:
    """The recipe's layer widths with every hidden width divided by `divisor` (a small model of the architecture)."""
    import torchvision

    architecture, classes, size = _check_recipe(recipe)
    with torch.device("meta"):
        model = torchvision.models.get_model(architecture, weights=None, num_classes=classes, **ARCHITECTURES[architecture])
    widths = layer_widths(model)
    first, last = _first_conv_name(model), _classifier_name(model)
    widths[first][0] = size[0]
    kept = {(first, 0), (last, 1)}  # the image's channels and the logits

    def narrow(name: str, index: int, width: int) -> int:
        if (name, index) in kept:
            return width
        if width % divisor:
            raise ValueError(f"{architecture} layer {name} width {width} is not divisible by {divisor}")
        return width // divisor

    return {name: [narrow(name, index, width) for index, width in enumerate(shape)] for name, shape in widths.items()}


def _first_conv_name(model: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if isinstance(module, nn.Conv2d))


def _classifier_name(model: nn.Module) -> str:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][-1]


def vision_recipe(model: nn.Module) -> dict[str, Any]:
    """The recipe of a (possibly pruned) classifier: its architecture, input and preprocessing, its widths."""
    return {**model.vision_base, "num_classes": getattr(model.get_submodule(_classifier_name(model)), "out_features"), "layers": layer_widths(model)}


def load_vision_directory(path: Path, uri: str) -> nn.Module:
    """The model of a `vision.json` + `model.safetensors` directory; ValueError names the problem."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{uri}/{CONFIG_FILE}: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{uri}/{CONFIG_FILE}: expected a JSON object")
    base = {key: config[key] for key in ("architecture", "num_classes", "input_size") if key in config}
    _check_recipe(base)
    if "preprocessing" in config:
        base["preprocessing"] = Preprocessing.from_recipe(config["preprocessing"], base["input_size"]).to_recipe()
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"{uri} has no {WEIGHTS_FILE}")
    with safe_open(str(weights), framework="pt") as handle:
        shapes = {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    skeleton = build_vision(base)
    widths = {}
    for name, module in skeleton.named_modules():
        weight = shapes.get(f"{name}.weight")
        if not isinstance(module, _SIZED) or weight is None:
            continue
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels
            widths[name] = [weight[0] if depthwise else weight[1] * module.groups, weight[0]]
        elif isinstance(module, nn.Linear):
            widths[name] = [weight[1], weight[0]]
        else:
            widths[name] = [weight[0]]
    recipe = {**base, "layers": widths}
    model = build_vision(recipe)
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{uri}/{WEIGHTS_FILE}: weights do not match {base['architecture']}: {' '.join(str(exc).split())[:400]}") from None
    return model.eval()


class Preprocessing:
    """Encoded JPEG/PNG bytes -> the model's FP32 [C, H, W] input: decode, resize the shorter side, center crop to
    the input size, scale to 0..1, normalise with mean and std. Images over `max_pixels` are refused undecoded."""

    def __init__(self, input_size: list[int], resize: int | None, mean: list[float], std: list[float], max_pixels: int):
        self.input_size, self.resize, self.mean, self.std, self.max_pixels = input_size, resize, mean, std, max_pixels

    @classmethod
    def from_recipe(cls, block: Any, input_size: list[int]) -> "Preprocessing":
        if not isinstance(block, dict):
            raise ValueError(f"preprocessing: expected a mapping, got {block!r}")
        unknown = sorted(set(block) - {"resize", "mean", "std", "maxPixels"})
        if unknown:
            raise ValueError(f"preprocessing.{unknown[0]}: unknown field (known: resize, mean, std, maxPixels)")
        channels = input_size[0]
        mean, std = block.get("mean", [0.0] * channels), block.get("std", [1.0] * channels)
        for key, values in (("mean", mean), ("std", std)):
            if not (isinstance(values, list) and len(values) == channels and all(isinstance(v, (int, float)) for v in values)):
                raise ValueError(f"preprocessing.{key}: expected {channels} numbers, got {values!r}")
        if any(v <= 0 for v in std):
            raise ValueError(f"preprocessing.std: expected positive numbers, got {std}")
        resize = block.get("resize")
        if resize is not None and (not isinstance(resize, int) or resize < min(input_size[1:])):
            raise ValueError(f"preprocessing.resize: expected an integer of at least {min(input_size[1:])}, got {resize!r}")
        max_pixels = block.get("maxPixels", DEFAULT_MAX_PIXELS)
        if not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"preprocessing.maxPixels: expected a positive integer, got {max_pixels!r}")
        return cls(input_size, resize, [float(v) for v in mean], [float(v) for v in std], max_pixels)

    def to_recipe(self) -> dict[str, Any]:
        return {"resize": self.resize, "mean": self.mean, "std": self.std, "maxPixels": self.max_pixels}

    def __call__(self, encoded: bytes, what: str) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_image
        from torchvision.transforms.v2 import functional as F

        width, height = image_size(encoded, what)
        if width * height > self.max_pixels:
            raise ValueError(f"{what}: a {width}x{height} image is over the limit of {self.max_pixels} pixels")
        mode = ImageReadMode.GRAY if self.input_size[0] == 1 else ImageReadMode.RGB
        try:
            image = decode_image(torch.frombuffer(bytearray(encoded), dtype=torch.uint8), mode=mode)
        except RuntimeError as exc:
            raise ValueError(f"{what}: not a decodable JPEG or PNG image: {' '.join(str(exc).split())[:200]}") from None
        if self.resize is not None:
            image = F.resize(image, [self.resize], antialias=True)
        if list(image.shape[1:]) != self.input_size[1:]:
            image = F.center_crop(image, self.input_size[1:])
        image = image.float().div_(255.0)
        return F.normalize(image, self.mean, self.std)


def image_size(encoded: bytes, what: str) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR or a JPEG's start-of-frame marker, read without decoding."""
    if encoded[:8] == b"\x89PNG\r\n\x1a\n" and len(encoded) >= 24 and encoded[12:16] == b"IHDR":
        return struct.unpack(">II", encoded[16:24])
    if encoded[:2] == b"\xff\xd8":
        offset = 2
        while offset + 4 <= len(encoded):
            if encoded[offset] != 0xFF:
                break
            marker = encoded[offset + 1]
            if marker == 0xFF:  # fill byte
                offset += 1
                continue
            (length,) = struct.unpack(">H", encoded[offset + 2 : offset + 4])
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and offset + 9 <= len(encoded):
                height, width = struct.unpack(">HH", encoded[offset + 5 : offset + 9])
                return width, height
            offset += 2 + length
    raise ValueError(f"{what}: expected an encoded JPEG or PNG image")


class TensorClassifierServable:
    """FP32 inputs of any rank (the batch first) -> `logits` FP32 [-1, C] and `label` INT64 [-1]."""

    def __init__(self, forward, info: ModelInfo):
        self.info = info
        self._forward = forward

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = [torch.from_numpy(self._array(inputs, spec)) for spec in self.info.inputs]
        with torch.inference_mode():
            logits = self._forward(*tensors).float().numpy()
        return {"logits": logits, "label": logits.argmax(axis=1).astype(np.int64)}

    def _array(self, inputs: dict[str, np.ndarray], spec: TensorSpec) -> np.ndarray:
        array = input_array(inputs, spec.name)
        if array.dtype.kind != "f":
            raise ValueError(f"input '{spec.name}': expected FP32 data, got dtype {array.dtype}")
        if array.ndim != len(spec.shape) or any(want not in (-1, got) for got, want in zip(array.shape, spec.shape)):
            raise ValueError(f"input '{spec.name}': expected shape {list(spec.shape)}, got {list(array.shape)}")
        if not np.isfinite(array).all():
            raise ValueError(f"input '{spec.name}': contains NaN or infinite values")
        return np.ascontiguousarray(array, dtype=np.float32)

    def warmup(self) -> None:
        self.predict({spec.name: np.zeros([1, *spec.shape[1:]], dtype=np.float32) for spec in self.info.inputs})


class ImageClassifierServable(TensorClassifierServable):
    """`image` BYTES [-1] of encoded JPEG/PNG, preprocessed into the model's input -> logits and label."""

    def __init__(self, forward, info: ModelInfo, preprocessing: Preprocessing):
        super().__init__(forward, info)
        self._preprocessing = preprocessing

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = self.info.inputs[0].name
        array = input_array(inputs, name)
        if array.ndim != 1:
            raise ValueError(f"input '{name}': expected shape [-1], got {list(array.shape)}")
        images = []
        for index, item in enumerate(array.tolist()):
            if not isinstance(item, (bytes, bytearray)):
                raise ValueError(f"input '{name}': element {index} is not BYTES")
            images.append(self._preprocessing(bytes(item), f"input '{name}' element {index}"))
        with torch.inference_mode():
            logits = self._forward(torch.stack(images)).float().numpy()
        return {"logits": logits, "label": logits.argmax(axis=1).astype(np.int64)}

    def example_inputs(self, rows: int) -> dict[str, np.ndarray]:
        """`rows` grey PNG images of the input size (what the server warms up with)."""
        from torchvision.io import encode_png

        channels, height, width = self._preprocessing.input_size
        image = encode_png(torch.full((channels, height, width), 128, dtype=torch.uint8)).numpy().tobytes()
        array = np.empty(rows, dtype=object)
        array.fill(image)
        return {self.info.inputs[0].name: array}

    def warmup(self) -> None:
        self.predict(self.example_inputs(1))


def classifier_outputs(classes: int) -> tuple[TensorSpec, ...]:
    return TensorSpec("logits", "FP32", (-1, classes)), TensorSpec("label", "INT64", (-1,))


def vision_signature(recipe: dict[str, Any]) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """`image` BYTES [-1] when the recipe declares preprocessing, else `input` FP32 [-1, C, H, W]."""
    image = (TensorSpec("image", "BYTES", (-1,)),) if recipe.get("preprocessing") else (
        TensorSpec("input", "FP32", (-1, *recipe["input_size"])),)
    return image, classifier_outputs(int(recipe["num_classes"]))
