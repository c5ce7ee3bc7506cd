"""load_servable: builtin models and artifacts, their signatures, and refusal of bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from slimserve.artifacts import ArtifactError, SlimServeError, save_artifact
from slimserve.models import Servable, load_servable
from slimserve.models.digits import digits_data


@pytest.mark.parametrize("name", ["digits-cnn", "digits-mlp"])
def test_builtin_digits_classify_held_out_rows(name):
    servable = load_servable(f"builtin://{name}")
    assert isinstance(servable, Servable)
    assert [(t.name, t.datatype, t.shape) for t in servable.info.inputs] == [("input", "FP32", (-1, 64))]
    assert [t.name for t in servable.info.outputs] == ["logits", "label"]
    data = digits_data()
    out = servable.predict({"input": data.x_test})
    assert out["logits"].shape == (len(data.x_test), 10) and out["logits"].dtype == np.float32
    assert out["label"].dtype == np.int64
    assert (out["label"] == data.y_test).mean() > 0.95


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 63), np.float32), r"input 'input': expected shape \[-1, 64\]"),
        (np.zeros((2, 64), np.int32), "input 'input': expected FP32"),
        (np.full((1, 64), np.inf, np.float32), "input 'input': contains NaN or infinite"),
        (np.zeros((0, 64), np.float32), "input 'input': expected a batch of at least one row"),
    ],
)
def test_digits_refuse_bad_input_naming_the_tensor(bad, message):
    servable = load_servable("builtin://digits-mlp")
    with pytest.raises(ValueError, match=message):
        servable.predict({"input": bad})
    with pytest.raises(ValueError, match="input 'input': missing"):
        servable.predict({"pixels": np.zeros((1, 64), np.float32)})


def test_minilm_embeds_text_and_refuses_bad_bytes():
    servable = load_servable("builtin://minilm-l6")
    assert [(t.name, t.datatype, t.shape) for t in servable.info.inputs] == [("text", "BYTES", (-1,))]
    assert [(t.name, t.shape) for t in servable.info.outputs] == [("embedding", (-1, 384))]
    texts = np.array([b"A cat sits on the mat.", "Un chat est assis.".encode(), b"Stock markets fell sharply."], dtype=object)
    embedding = servable.predict({"text": texts})["embedding"]
    assert embedding.shape == (3, 384) and embedding.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    assert embedding[0] @ embedding[2] < embedding[0] @ embedding[0] - 0.3
    with pytest.raises(ValueError, match="input 'text': element 1 is not valid UTF-8"):
        servable.predict({"text": np.array([b"fine", b"\xff\xfe"], dtype=object)})
    with pytest.raises(ValueError, match=r"input 'text': expected shape \[-1\]"):
        servable.predict({"text": np.array([[b"a"]], dtype=object)})


def test_fp32_artifact_serves_like_the_builtin(tmp_path, digits_cnn):
    ref = save_artifact(
        f"file://{tmp_path}/cnn", family="digits-cnn", recipe=digits_cnn.recipe,
        tensors=digits_cnn.model.state_dict(), source="builtin://digits-cnn",
    )
    served = load_servable(ref.uri)
    assert served.info.digest == ref.digest and served.info.name == "digits-cnn"
    rows = digits_data().x_test[:16]
    np.testing.assert_allclose(
        served.predict({"input": rows})["logits"], load_servable("builtin://digits-cnn").predict({"input": rows})["logits"], atol=1e-5
    )
    with pytest.raises(ArtifactError, match="digest mismatch"):
        load_servable(ref.uri, expected_digest="sha256:" + "1" * 64)


def test_unknown_builtin_is_refused():
    with pytest.raises(SlimServeError, match="unknown builtin model 'builtin://resnet'"):
        load_servable("builtin://resnet")


def test_builtin_training_does_not_depend_on_the_callers_threads(tmp_path, monkeypatch):
    """The demo models are trained and cached on each machine: their weights must not depend on its cores."""
    import torch

    from slimserve.models import digits

    monkeypatch.setattr(digits, "TRAIN_EPOCHS", 1)
    weights = []
    for threads in (2, 1):
        monkeypatch.setenv("SLIMSERVE_CACHE", str(tmp_path / f"cache-{threads}"))
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            model = digits.trained_builtin("digits-cnn", digits.DEFAULT_CNN_RECIPE, digits.build_cnn)
        finally:
            torch.set_num_threads(previous)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert list((tmp_path / f"cache-{threads}" / "models").glob("digits-cnn-*.safetensors"))  # trained, not read
    assert torch.equal(weights[0], weights[1])
