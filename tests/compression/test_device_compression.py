"""Compression on the chosen device: artifacts are device-independent (written from CPU copies, loaded on any
device), and a GPU asked for but not usable fails the run with the reason. Tests marked `gpu` run where
CUDA is (skip elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimserve.artifacts import load_artifact
from slimserve.compression import compress
from slimserve.models import load_servable
from slimserve.models.device import DeviceUnavailable, host_tensors
from slimserve.models.digits import digits_data

PRUNE_AND_RECOVER = [{"prune": {"amount": 0.3, "finetuneEpochs": 1}}]


def _compress_and_serve(make_spec, sink, output, *, compress_on: str, serve_on: str):
    spec = make_spec(output, model="builtin://digits-mlp", steps=PRUNE_AND_RECOVER)
    outcome = compress(spec, [sink], device=compress_on)
    assert all(t.device.type == "cpu" for t in load_artifact(outcome.artifact.uri).tensors().values())
    servable = load_servable(outcome.artifact.uri, device=serve_on)
    data = digits_data()
    labels = servable.predict({"input": data.x_test})["label"]
    # The served model is the one the run measured: its accuracy is the status's figure.
    assert outcome.metrics.compressed.metric == pytest.approx((labels == data.y_test).mean(), abs=2e-3)
    return servable


def test_an_artifact_made_on_the_cpu_serves_where_auto_puts_it(tmp_path, make_spec, sink):
    servable = _compress_and_serve(make_spec, sink, tmp_path / "out", compress_on="cpu", serve_on="auto")
    assert servable.info.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert servable.info.precision == "fp32"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_run_asked_onto_a_gpu_it_cannot_see_fails_with_the_reason_and_writes_nothing(tmp_path, make_spec, sink):
    spec = make_spec(tmp_path / "out", model="builtin://digits-mlp")
    with pytest.raises(DeviceUnavailable, match="^device cuda: "):
        compress(spec, [sink], device="cuda")
    assert sink.errors and sink.errors[0][0] == "DeviceUnavailable"
    assert not (tmp_path / "out").exists()


def test_saved_tensors_are_host_copies_and_a_tensor_without_values_is_refused():
    weights = {"weight": torch.ones(2, 2, requires_grad=True), "bias": torch.zeros(2)}
    copies = host_tensors(weights)
    assert all(t.device.type == "cpu" and not t.requires_grad for t in copies.values())
    with pytest.raises(ValueError, match="'skeleton.weight' is on the meta device"):
        host_tensors({"skeleton.weight": torch.empty(2, 2, device="meta")})


@pytest.mark.gpu
def test_an_artifact_made_on_the_gpu_serves_on_the_cpu(tmp_path, make_spec, sink):
    servable = _compress_and_serve(make_spec, sink, tmp_path / "out", compress_on="cuda", serve_on="cpu")
    assert servable.info.device == "cpu"
    started = [event.message for event in sink.events if "loading" in (event.message or "")]
    assert any("onto cuda:0" in message for message in started)
    reference = load_servable("builtin://digits-mlp", device="cpu").predict({"input": digits_data().x_test[:64]})
    labels = servable.predict({"input": digits_data().x_test[:64]})["label"]
    assert (labels == reference["label"]).mean() > 0.9
    assert np.isfinite(servable.predict({"input": digits_data().x_test[:2]})["logits"]).all()
