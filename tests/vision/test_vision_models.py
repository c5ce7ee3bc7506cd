"""torchvision image classifiers with the user's own weights: built at a small width, loaded from a vision.json +
model.safetensors directory, saved as an artifact and served; encoded images decoded and normalised by the server."""

from __future__ import annotations

import io
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from serving_helpers import ServerProcess, request  # noqa: E402

from slimserve.artifacts import save_artifact  # noqa: E402
from slimserve.models import load_servable  # noqa: E402
from slimserve.models.errors import ModelLoadError  # noqa: E402
from slimserve.models.loading import load_model  # noqa: E402
from slimserve.models.vision import build_vision, narrow_widths  # noqa: E402

# One of each family at a small width (Inception v3 needs 75x75 at least).
ARCHITECTURES = {
    "resnet18": [3, 32, 32], "vgg11_bn": [3, 32, 32], "googlenet": [3, 32, 32], "inception_v3": [3, 75, 75],
    "mobilenet_v3_small": [3, 32, 32],
}
PREPROCESSING = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def user_directory(root: Path, architecture: str, size: list[int], **extra) -> tuple[Path, torch.nn.Module]:
    """What a user brings: their weights (here random, at an eighth of the width) and vision.json."""
    recipe = {"architecture": architecture, "num_classes": 7, "input_size": size}
    torch.manual_seed(0)
    model = build_vision({**recipe, "layers": narrow_widths(recipe, 8)})
    for module in model.modules():  # running statistics other than 0 and 1, so that loading them shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    directory = root / architecture
    directory.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    (directory / "vision.json").write_text(json.dumps({**recipe, **extra}))
    return directory, model


def to_artifact(directory: Path, root: Path) -> str:
    loaded = load_model(f"file://{directory}")
    uri = f"file://{root / (directory.name + '-artifact')}"
    save_artifact(uri, family=loaded.family.name, recipe=loaded.recipe, tensors=loaded.model.state_dict(), source=loaded.source)
    return uri


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_each_architecture_loads_its_weights_and_serves_them(architecture, tmp_path):
    size = ARCHITECTURES[architecture]
    directory, model = user_directory(tmp_path, architecture, size)
    images = torch.rand(3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(images).numpy()

    servable = load_servable(to_artifact(directory, tmp_path))

    assert [(s.name, s.datatype, list(s.shape)) for s in servable.info.inputs] == [("input", "FP32", [-1, *size])]
    answer = servable.predict({"input": images.numpy()})
    np.testing.assert_allclose(answer["logits"], expected, rtol=1e-4, atol=1e-5)
    assert answer["label"].tolist() == expected.argmax(axis=1).tolist()
    with pytest.raises(ValueError, match=r"input 'input': expected shape \[-1, 3"):
        servable.predict({"input": np.zeros((1, 3, 8, 8), dtype=np.float32)})


def test_weights_of_another_architecture_are_refused_naming_the_file(tmp_path):
    directory, _ = user_directory(tmp_path, "resnet18", [3, 32, 32])
    config = json.loads((directory / "vision.json").read_text())
    (directory / "vision.json").write_text(json.dumps({**config, "architecture": "vgg11_bn"}))
    with pytest.raises(ModelLoadError, match="model.safetensors: weights do not match vgg11_bn"):
        load_model(f"file://{directory}")
    (directory / "vision.json").write_text(json.dumps({**config, "architecture": "alexnet"}))
    with pytest.raises(ModelLoadError, match="architecture: 'alexnet' is not one of"):
        load_model(f"file://{directory}")


def _jpeg(seed: int, height: int, width: int) -> bytes:
    from torchvision.io import encode_jpeg

    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return encode_jpeg(image, quality=90).numpy().tobytes()


def _raw_bytes_request(images: list[bytes]) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(struct.pack("<I", len(image)) + image for image in images)
    header = json.dumps({"inputs": [{
        "name": "image", "datatype": "BYTES", "shape": [len(images)], "parameters": {"binary_data_size": len(raw)},
    }]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}


def test_a_jpeg_sent_as_bytes_gets_the_answer_of_its_decoded_tensor(tmp_path):
    from PIL import Image

    directory, model = user_directory(
        tmp_path, "resnet18", [3, 32, 32], preprocessing={**PREPROCESSING, "resize": 32, "maxPixels": 256 * 256},
    )
    images = [_jpeg(seed, 32, 32) for seed in range(3)]
    # The decoded tensor, by another decoder (Pillow) and normalised here: what a client would send as FP32.
    decoded = torch.stack([torch.from_numpy(np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))).permute(2, 0, 1) for b in images])
    mean, std = torch.tensor(PREPROCESSING["mean"]).view(3, 1, 1), torch.tensor(PREPROCESSING["std"]).view(3, 1, 1)
    with torch.inference_mode():
        expected = model((decoded.float() / 255 - mean) / std).numpy()

    server = ServerProcess(to_artifact(directory, tmp_path), tmp_path, "--model-name", "resnet18").start()
    try:
        status, _, body = request(server.http_url, "GET", "/v2/models/resnet18")
        assert status == 200, body
        assert json.loads(body)["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
        status, _, body = request(server.http_url, "POST", "/v2/models/resnet18/infer", *_raw_bytes_request(images))
        assert status == 200, body
        outputs = {output["name"]: output for output in json.loads(body)["outputs"]}
        logits = np.array(outputs["logits"]["data"], dtype=np.float32).reshape(3, 7)
        np.testing.assert_allclose(logits, expected, atol=2e-3)
        assert outputs["label"]["data"] == expected.argmax(axis=1).tolist()

        too_large = _jpeg(0, 300, 300)
        status, _, body = request(server.http_url, "POST", "/v2/models/resnet18/infer", *_raw_bytes_request([too_large]))
        assert status == 400 and b"300x300 image is over the limit of 65536 pixels" in body, body
        status, _, body = request(server.http_url, "POST", "/v2/models/resnet18/infer", *_raw_bytes_request([b"GIF89a..."]))
        assert status == 400 and b"expected an encoded JPEG or PNG image" in body, body
    finally:
        server.stop()
