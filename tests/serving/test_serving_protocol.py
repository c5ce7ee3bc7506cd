"""Both protocols, spoken by tritonclient (a client written elsewhere), against real `slimserve serve` processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving_helpers import HOST, free_port

DIGITS = np.random.default_rng(0).random((3, 64), dtype=np.float32) * 16
TEXTS = np.array(["a cat sits on the mat".encode(), "ünïcode survives the trip".encode(), b"x"], dtype=object)


def http_infer(server, model, name, datatype, array, binary=True, outputs=None, **kwargs):
    client = httpclient.InferenceServerClient(server.http_url)
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    requested = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in outputs] if outputs else None
    return client.infer(model, [tensor], outputs=requested, **kwargs)


def grpc_infer(server, model, name, datatype, array, outputs=None, **kwargs):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    requested = [grpcclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    return client.infer(model, [tensor], outputs=requested, **kwargs)


def test_health_and_metadata_over_both_protocols(cnn_server):
    http = httpclient.InferenceServerClient(cnn_server.http_url)
    assert http.is_server_live() and http.is_server_ready() and http.is_model_ready("digits")
    assert not http.is_model_ready("digits", model_version="no-such-version")
    metadata = http.get_model_metadata("digits")
    assert metadata["name"] == "digits"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert {o["name"]: o["datatype"] for o in metadata["outputs"]} == {"logits": "FP32", "label": "INT64"}
    assert http.get_server_metadata()["name"] == "slimserve"

    rpc = grpcclient.InferenceServerClient(cnn_server.grpc_url)
    assert rpc.is_server_live() and rpc.is_server_ready() and rpc.is_model_ready("digits")
    grpc_metadata = rpc.get_model_metadata("digits", as_json=True)
    assert grpc_metadata["inputs"][0]["shape"] == ["-1", "64"]  # int64 as JSON strings, protobuf's rule
    assert "binary_tensor_data" in rpc.get_server_metadata().extensions


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_digits_cnn_over_rest_matches_the_model(cnn_server, reference_model, binary):
    expected = reference_model("builtin://digits-cnn").predict({"input": DIGITS})
    result = http_infer(cnn_server, "digits", "input", "FP32", DIGITS, binary=binary, outputs=["logits", "label"])
    np.testing.assert_allclose(result.as_numpy("logits"), expected["logits"], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])


def test_digits_cnn_over_grpc_raw_contents_matches_the_model(cnn_server, reference_model):
    expected = reference_model("builtin://digits-cnn").predict({"input": DIGITS})
    result = grpc_infer(cnn_server, "digits", "input", "FP32", DIGITS)
    np.testing.assert_allclose(result.as_numpy("logits"), expected["logits"], rtol=1e-4, atol=1e-4)
    assert result.as_numpy("label").dtype == np.int64


def test_grpc_typed_contents_come_back_typed(cnn_server, reference_model):
    expected = reference_model("builtin://digits-cnn").predict({"input": DIGITS[:2]})
    request = service_pb2.ModelInferRequest(model_name="digits", id="typed-1")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 64])
    tensor.contents.fp32_contents.extend(DIGITS[:2].reshape(-1).tolist())
    with grpc.insecure_channel(cnn_server.grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert response.id == "typed-1" and not response.raw_output_contents
    outputs = {o.name: o for o in response.outputs}
    logits = np.array(outputs["logits"].contents.fp32_contents, dtype=np.float32).reshape(2, -1)
    np.testing.assert_allclose(logits, expected["logits"], rtol=1e-4, atol=1e-4)
    assert list(outputs["label"].contents.int64_contents) == expected["label"].tolist()


@pytest.mark.parametrize("protocol", ["rest-binary", "rest-json", "grpc"])
def test_minilm_takes_text_and_returns_embeddings(minilm_server, reference_model, protocol):
    expected = reference_model("builtin://minilm-l6").predict({"text": TEXTS})["embedding"]
    if protocol == "grpc":
        result = grpc_infer(minilm_server, "minilm-l6", "text", "BYTES", TEXTS)
    else:
        result = http_infer(minilm_server, "minilm-l6", "text", "BYTES", TEXTS, binary=protocol == "rest-binary")
    embedding = result.as_numpy("embedding")
    assert embedding.shape == (3, 384) and embedding.dtype == np.float32
    np.testing.assert_allclose(embedding, expected, rtol=1e-3, atol=1e-4)


def test_versioned_paths_request_ids_and_output_selection(cnn_server):
    version = httpclient.InferenceServerClient(cnn_server.http_url).get_model_metadata("digits")["versions"][0]
    rest = http_infer(cnn_server, "digits", "input", "FP32", DIGITS, outputs=["label"], model_version=version, request_id="r-42")
    assert rest.get_response()["id"] == "r-42" and rest.get_response()["model_version"] == version
    assert rest.as_numpy("logits") is None and rest.as_numpy("label").shape == (3,)
    rpc = grpc_infer(cnn_server, "digits", "input", "FP32", DIGITS, outputs=["logits"], model_version=version, request_id="g-7")
    assert rpc.get_response().id == "g-7"
    assert rpc.as_numpy("label") is None and rpc.as_numpy("logits").shape == (3, 10)


def test_a_saved_artifact_is_served_under_its_own_version(artifact_server, cnn_artifact, reference_model):
    expected = reference_model(cnn_artifact)
    metadata = httpclient.InferenceServerClient(artifact_server.http_url).get_model_metadata(expected.info.name)
    assert metadata["versions"] == [expected.info.version]
    result = grpc_infer(artifact_server, expected.info.name, "input", "FP32", DIGITS)
    np.testing.assert_allclose(
        result.as_numpy("logits"), expected.predict({"input": DIGITS})["logits"], rtol=1e-4, atol=1e-4
    )


@pytest.mark.slow
def test_an_int8_artifact_from_slimserve_compress_serves_like_it_loads(int8_server, int8_artifact, reference_model):
    expected = reference_model(int8_artifact).predict({"input": DIGITS})
    assert httpclient.InferenceServerClient(int8_server.http_url).get_model_metadata("digits-int8")["versions"] == [
        reference_model(int8_artifact).info.version
    ]
    rest = http_infer(int8_server, "digits-int8", "input", "FP32", DIGITS, outputs=["logits", "label"])
    rpc = grpc_infer(int8_server, "digits-int8", "input", "FP32", DIGITS)
    for result in (rest, rpc):
        np.testing.assert_allclose(result.as_numpy("logits"), expected["logits"], rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])


def serve_and_fail(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slimserve.cli.main", "serve", *args, "--host", HOST,
         "--http-port", str(free_port()), "--grpc-port", str(free_port()), "--torch-threads", "1"],
        capture_output=True, text=True, timeout=120,
    )


def test_an_artifact_with_another_digest_than_pinned_is_refused(cnn_artifact):
    done = serve_and_fail("--artifact", cnn_artifact, "--artifact-digest", "sha256:" + "0" * 64)
    assert done.returncode == 1
    assert "digest mismatch" in done.stderr


def test_a_tampered_artifact_is_refused_at_start(tmp_path, cnn_artifact):
    tampered = tmp_path / "tampered"
    shutil.copytree(Path(cnn_artifact.removeprefix("file://")), tampered)
    weights = next(tampered.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    done = serve_and_fail("--artifact", f"file://{tampered}")
    assert done.returncode == 1
    assert "could not load" in done.stderr and weights.name in done.stderr
