"""The device policy (auto, cpu, cuda, cuda:N) and the server on its device: a GPU asked for but not usable
stops the server with the reason; metadata and the startup log say where the model runs and in what
precision; the GPU memory gauges exist only on a GPU. Tests marked `gpu` run where CUDA is (skip elsewhere)."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
import torch
from torch import nn

from serving_helpers import ServerProcess
from slimserve.models.cuda_graphs import SEQUENCE_STEP, bucket_shape, pad_to
from slimserve.models.device import CudaProbe, DeviceUnavailable, precision, resolve_device
from slimserve.serving.metrics import ServerMetrics

DIGITS = np.random.default_rng(0).random((5, 64), dtype=np.float32)
ONE_GPU = CudaProbe(built=True, visible_devices=None, device_count=1)


# ---- the policy --------------------------------------------------------------------------------------


def test_auto_runs_on_the_cpu_where_no_gpu_is_seen_and_on_the_first_gpu_otherwise():
    seen = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == seen
    assert resolve_device("auto", CudaProbe(built=True, visible_devices="", device_count=0)) == torch.device("cpu")
    assert resolve_device("AUTO", CudaProbe(built=True, visible_devices="2,3", device_count=2)) == torch.device("cuda", 0)
    assert resolve_device(" cpu ", ONE_GPU) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_forced_cuda_without_a_gpu_says_why_on_this_machine():
    with pytest.raises(DeviceUnavailable, match=r"^device cuda: ") as caught:
        resolve_device("cuda")
    reason = "built without CUDA" if torch.version.cuda is None else "no usable GPU"
    assert reason in str(caught.value) and caught.value.reason == "DeviceUnavailable"
    hidden = CudaProbe.of_this_process({"CUDA_VISIBLE_DEVICES": ""})
    with pytest.raises(DeviceUnavailable, match="CUDA_VISIBLE_DEVICES is '', so the process sees no GPU"):
        resolve_device("cuda:0", hidden)


@pytest.mark.parametrize(("name", "probe", "reason"), [
    ("cuda", CudaProbe(built=False, visible_devices=None, device_count=0), "built without CUDA"),
    ("cuda", CudaProbe(built=True, visible_devices="-1", device_count=0), "CUDA_VISIBLE_DEVICES is '-1'"),
    ("cuda", CudaProbe(built=True, visible_devices=None, device_count=0, error="Found no NVIDIA driver"),
     "no usable GPU: Found no NVIDIA driver"),
    ("cuda:1", ONE_GPU, "index 1 is out of range: the process sees 1 GPU"),
    ("gpu", ONE_GPU, "'gpu' is not one of auto, cpu, cuda, cuda:N"),
])
def test_each_reason_a_gpu_cannot_be_used_is_named(name, probe, reason):
    with pytest.raises(DeviceUnavailable, match=reason):
        resolve_device(name, probe)
    assert resolve_device("cpu", probe) == torch.device("cpu")  # asking for the CPU never fails


def test_precision_is_the_float_dtype_or_the_quantized_kinds():
    assert precision(nn.Linear(2, 2)) == "fp32"
    assert precision(nn.Linear(2, 2).half()) == "fp16"
    assert precision(nn.Linear(2, 2).bfloat16()) == "bf16"
    recipe = {"modules": {"encoder.0": {"kind": "int8-dynamic-linear"}, "embed": {"kind": "int8-embedding"}}}
    assert precision(nn.Linear(2, 2), recipe) == "int8-dynamic"


# ---- CUDA graphs: the shape buckets (the recording itself is CUDA's) ---------------------------------


def test_cuda_graph_buckets_pad_batches_to_powers_of_two_and_token_sequences_with_padding():
    ids = torch.tensor([[101, 7, 102], [101, 102, 0], [101, 9, 102]])
    mask = (ids != 0).long()
    rows = torch.rand(3, 64)
    shapes = bucket_shape((ids, mask, rows))
    assert shapes == ((4, SEQUENCE_STEP), (4, SEQUENCE_STEP), (4, 64))
    padded_ids, padded_mask = pad_to(ids, shapes[0]), pad_to(mask, shapes[1])
    assert torch.equal(padded_ids[:3, :3], ids) and torch.equal(padded_ids[3], padded_ids[2])
    assert padded_mask[:, 3:].sum() == 0  # the added positions are masked out
    assert torch.equal(pad_to(rows, shapes[2])[3], rows[2])
    assert bucket_shape((torch.rand(32, 64),)) == ((32, 64),)  # a full batch needs no padding


# ---- metrics ------------------------------------------------------------------------------------------


def test_gpu_memory_gauges_are_registered_per_device_only_when_asked():
    metrics = ServerMetrics()
    assert b"slimserve_gpu_memory" not in metrics.exposition()[0]
    metrics.watch_gpu_memory("cuda:0")
    text = metrics.exposition()[0].decode()
    for what in ("allocated", "reserved"):
        assert f'slimserve_gpu_memory_{what}_bytes{{device="cuda:0"}}' in text


# ---- the server ---------------------------------------------------------------------------------------


def _get(server: ServerProcess, path: str) -> bytes:
    with urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=10) as answer:
        return answer.read()


def test_a_cpu_server_reports_its_device_and_precision_and_has_no_gpu_gauge(cnn_server):
    metadata = json.loads(_get(cnn_server, "/v2/models/digits"))
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert metadata["parameters"] == {"device": expected, "precision": "fp32"}
    assert f"loaded on {expected} in fp32" in cnn_server.log()
    assert (b"slimserve_gpu_memory_allocated_bytes" in _get(cnn_server, "/metrics")) == torch.cuda.is_available()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_server_told_to_use_a_gpu_it_cannot_see_exits_with_the_reason(server_logs):
    server = ServerProcess("builtin://digits-mlp", server_logs, env={"SLIMSERVE_DEVICE": "cuda"})
    with pytest.raises(RuntimeError, match="server exited with 1") as caught:
        server.start(timeout_s=60)
    assert "device cuda: " in str(caught.value)
    assert "ready: model" not in server.log()  # it never served, on the CPU or anywhere


# ---- on a GPU -----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("graphs", [(), ("--cuda-graphs",)], ids=["eager", "cuda-graphs"])
def test_a_server_on_the_gpu_serves_what_the_cpu_model_answers(server_logs, reference_model, graphs):
    import tritonclient.http as httpclient

    server = ServerProcess("builtin://minilm-l6", server_logs, "--device", "cuda", *graphs).start()
    try:
        metadata = json.loads(_get(server, "/v2/models/minilm-l6"))
        assert metadata["parameters"] == {"device": "cuda:0", "precision": "fp32"}
        assert b'slimserve_gpu_memory_allocated_bytes{device="cuda:0"}' in _get(server, "/metrics")
        texts = np.array([b"a GPU pool that uses its GPU", b"short", b"a third sentence of other length"], dtype=object)
        tensor = httpclient.InferInput("text", [3], "BYTES")
        tensor.set_data_from_numpy(texts)
        result = httpclient.InferenceServerClient(server.http_url).infer("minilm-l6", [tensor])
        expected = reference_model("builtin://minilm-l6").predict({"text": texts})["embedding"]
        np.testing.assert_allclose(result.as_numpy("embedding"), expected, atol=2e-3)
    finally:
        server.stop()
