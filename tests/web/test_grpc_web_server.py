"""gRPC-Web on a real `slimserve serve` process: the reference client, bad frames, CORS, defaults, metrics."""

from __future__ import annotations

import base64
import re
import struct
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from slimserve.serving.proto import open_inference_v2_pb2 as pb
from tests.serving.serving_helpers import request
from tests.web.web_helpers import ALLOWED_ORIGIN, PROTO, rest_json, run_node
from tests.web.grpc_web_helpers import BINARY, TEXT, call, frame, unary

INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED = 3, 5, 12


def digits_request(model: str, pixels: list[list[float]]) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model)
    tensor = message.inputs.add(name="input", datatype="FP32", shape=[len(pixels), 64])
    tensor.contents.fp32_contents.extend(np.asarray(pixels, dtype=np.float32).ravel().tolist())
    return message


def rest_infer(server, model: str, inputs: list[dict]) -> dict:
    status, answer = rest_json(server, "POST", f"/v2/models/{model}/infer", {"inputs": inputs})
    assert status == 200, answer
    return {output["name"]: output for output in answer["outputs"]} | {"parameters": answer.get("parameters", {})}


def node_call(server, model: str, fmt: str, inputs: list[dict]) -> dict:
    return run_node("grpc_web_call.js", {
        "url": f"http://{server.http_url}", "proto": str(PROTO), "model": model, "format": fmt, "inputs": inputs,
    })


@pytest.mark.parametrize("fmt", ["binary", "text"])
def test_reference_grpc_web_client_gets_the_rest_answer_for_a_digit(node_project, digits_web_server, digit_samples, fmt):
    sample = digit_samples[7]
    inputs = [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": sample["pixels"]}]
    answer = node_call(digits_web_server, "digits-mlp", fmt, inputs)
    rest = rest_infer(digits_web_server, "digits-mlp", inputs)

    outputs = {output["name"]: output for output in answer["infer"]["outputs"]}
    assert outputs["logits"]["shape"] == rest["logits"]["shape"] == [1, 10]
    np.testing.assert_allclose(outputs["logits"]["data"], rest["logits"]["data"], rtol=1e-6, atol=1e-6)
    assert outputs["label"]["data"] == rest["label"]["data"] == [7]
    assert answer["infer"]["parameters"]["batch_size"] == rest["parameters"]["batch_size"] == 1

    _, server_metadata = rest_json(digits_web_server, "GET", "/v2")
    assert answer["serverMetadata"] == server_metadata
    _, model_metadata = rest_json(digits_web_server, "GET", "/v2/models/digits-mlp")
    # REST's metadata adds `parameters` (device, precision); the protocol's gRPC message has no such field.
    assert model_metadata.pop("parameters") == {"device": "cpu", "precision": "fp32"}
    assert answer["modelMetadata"] == model_metadata

    status, missing = rest_json(digits_web_server, "POST", "/v2/models/digits-mlp-missing/infer", {"inputs": inputs})
    assert status == 404
    assert answer["unknownModelError"] == {"code": NOT_FOUND, "message": missing["error"]}


def test_reference_grpc_web_client_gets_the_rest_embeddings_for_texts(node_project, minilm_web_server):
    texts = ["gRPC-Web from a browser", "Ein Satz auf Deutsch, mit Umlauten: äöü"]
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}]
    answer = node_call(minilm_web_server, "minilm-l6", "binary", inputs)
    rest = rest_infer(minilm_web_server, "minilm-l6", inputs)

    (embedding,) = answer["infer"]["outputs"]
    assert embedding["shape"] == rest["embedding"]["shape"] == [2, 384]
    np.testing.assert_allclose(embedding["data"], rest["embedding"]["data"], rtol=1e-5, atol=1e-6)
    assert answer["infer"]["parameters"]["batch_size"] == 2


def test_batch_size_parameter_counts_the_rows_of_the_model_call(digits_web_server, digit_samples):
    pixels = [sample["pixels"] for sample in digit_samples[:3]]
    answer, response = unary(digits_web_server.http_url, "ModelInfer", digits_request("digits-mlp", pixels),
                             pb.ModelInferResponse)
    assert answer.status == 0, answer.message
    assert response.parameters["batch_size"].int64_param == 3
    assert list(response.outputs[1].contents.int64_contents) == [0, 1, 2]


def _batch_histogram(server) -> tuple[float, float]:
    """(model calls, rows) so far, from the server's slimserve_batch_size histogram."""
    text = request(server.http_url, "GET", "/metrics")[2].decode()
    values = [float(re.search(rf"^slimserve_batch_size_{part} (\S+)$", text, re.M).group(1)) for part in ("count", "sum")]
    return values[0], values[1]


def test_concurrent_grpc_web_calls_report_the_batches_the_server_ran(digits_web_server, digit_samples):
    """Each request's batch_size is the size of a real model call: the requests of a batch of b each report b,
    so summing 1/b over the requests counts the model calls the server's metrics saw."""
    calls_before, rows_before = _batch_histogram(digits_web_server)
    message = digits_request("digits-mlp", [digit_samples[0]["pixels"]])
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: unary(digits_web_server.http_url, "ModelInfer", message, pb.ModelInferResponse),
                                range(48)))
    sizes = [response.parameters["batch_size"].int64_param for _, response in answers]
    calls_after, rows_after = _batch_histogram(digits_web_server)
    assert all(answer.status == 0 for answer, _ in answers)
    assert rows_after - rows_before == 48
    assert sum(1 / size for size in sizes) == pytest.approx(calls_after - calls_before)
    print(f"batch sizes seen: {sorted(set(sizes))}")


# ---------------------------------------------------------------------------------------------- bad frames
def _good_body() -> bytes:
    return frame(pb.ModelMetadataRequest(name="digits-mlp").SerializeToString())


BAD_REQUESTS = {
    "empty body": (b"", BINARY, INVALID_ARGUMENT, "truncated frame"),
    "truncated header": (b"\x00\x00\x00", BINARY, INVALID_ARGUMENT, "truncated frame"),
    "length prefix too long": (struct.pack(">BI", 0, 500) + b"\x0a\x02hi", BINARY, INVALID_ARGUMENT, "length prefix says 500"),
    "length prefix too short": (struct.pack(">BI", 0, 2) + b"\x0a\x0adigits-mlp", BINARY, INVALID_ARGUMENT,
                                "exactly one message"),
    "garbage message": (frame(b"\xff\xff\xff\xff\x0f"), BINARY, INVALID_ARGUMENT, "not a valid message"),
    "compressed flag": (frame(b"\x0a\x00", flags=1), BINARY, INVALID_ARGUMENT, "compressed"),
    "trailer frame from the client": (frame(b"grpc-status: 0\r\n", flags=0x80), BINARY, INVALID_ARGUMENT, "trailer"),
    "text body not base64": (b"!!not base64!!", TEXT, INVALID_ARGUMENT, "not valid base64"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_frame_gets_a_grpc_status_and_the_server_keeps_serving(digits_web_server, case):
    body, content_type, code, words = BAD_REQUESTS[case]
    answer = call(digits_web_server.http_url, "ModelMetadata", body, content_type)
    assert answer.http_status == 200
    assert (answer.status, answer.messages) == (code, [])
    assert words in answer.message

    good = call(digits_web_server.http_url, "ModelMetadata", _good_body())
    assert good.status == 0, good.message
    assert pb.ModelMetadataResponse.FromString(good.messages[0]).name == "digits-mlp"
    assert digits_web_server.process.poll() is None


def test_a_wrong_content_type_on_a_grpc_path_is_refused_with_a_grpc_status(digits_web_server):
    answer = call(digits_web_server.http_url, "ModelMetadata", _good_body(), content_type="application/json")
    assert answer.http_status == 415
    assert answer.status == INVALID_ARGUMENT
    assert "application/json" in answer.message and "grpc-web" in answer.message


def test_unknown_method_and_wrong_http_method_get_unimplemented(digits_web_server):
    unknown = call(digits_web_server.http_url, "NoSuchMethod", _good_body())
    assert (unknown.http_status, unknown.status) == (200, UNIMPLEMENTED)
    get = call(digits_web_server.http_url, "ModelMetadata", b"", http_method="GET")
    assert (get.http_status, get.status, get.headers.get("allow")) == (405, UNIMPLEMENTED, "POST")


def test_data_plane_errors_map_to_the_same_status_and_message_as_native_grpc(digits_web_server):
    bad_shape = pb.ModelInferRequest(model_name="digits-mlp")
    tensor = bad_shape.inputs.add(name="input", datatype="FP32", shape=[1, 63])
    tensor.contents.fp32_contents.extend([0.0] * 63)
    web, _ = unary(digits_web_server.http_url, "ModelInfer", bad_shape, pb.ModelInferResponse, text=True)

    with grpc.insecure_channel(digits_web_server.grpc_url) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=pb.ModelInferRequest.SerializeToString,
                                    response_deserializer=pb.ModelInferResponse.FromString)
        with pytest.raises(grpc.RpcError) as native:
            infer(bad_shape, timeout=30)
    assert native.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (web.status, web.message) == (INVALID_ARGUMENT, native.value.details())
    assert "input" in web.message


def test_grpc_web_calls_are_counted_in_the_servers_metrics(digits_web_server):
    unary(digits_web_server.http_url, "ServerMetadata", pb.ServerMetadataRequest(), pb.ServerMetadataResponse)
    _, _, metrics = request(digits_web_server.http_url, "GET", "/metrics")
    text = metrics.decode()
    assert 'slimserve_requests_total{code="OK",endpoint="ServerMetadata",protocol="grpc-web"}' in text
    assert 'endpoint="ModelInfer",protocol="grpc-web"' in text
    assert 'slimserve_request_duration_seconds_count{protocol="grpc-web"}' in text


# ---------------------------------------------------------------------------------------------- CORS
def _preflight(server, origin: str) -> tuple[int, dict[str, str]]:
    status, headers, _ = request(server.http_url, "OPTIONS", "/inference.GRPCInferenceService/ModelInfer", None, {
        "origin": origin, "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,x-grpc-web,x-user-agent",
    })
    return status, headers


def test_cors_preflight_and_call_work_for_the_configured_origin(digits_web_server):
    status, headers = _preflight(digits_web_server, ALLOWED_ORIGIN)
    assert status == 200
    assert headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in headers["access-control-allow-methods"]
    assert "x-grpc-web" in headers["access-control-allow-headers"].lower()

    answer = call(digits_web_server.http_url, "ModelMetadata", _good_body(), headers={"origin": ALLOWED_ORIGIN})
    assert answer.status == 0
    assert answer.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "grpc-status" in answer.headers["access-control-expose-headers"]


def test_cors_stays_closed_to_other_origins(digits_web_server):
    status, headers = _preflight(digits_web_server, "http://evil.test")
    assert status >= 400
    assert "access-control-allow-origin" not in headers
    answer = call(digits_web_server.http_url, "ModelMetadata", _good_body(), headers={"origin": "http://evil.test"})
    assert "access-control-allow-origin" not in answer.headers


def test_cors_is_closed_by_default(minilm_web_server):
    status, headers = _preflight(minilm_web_server, ALLOWED_ORIGIN)
    assert status >= 400
    assert not any(name.startswith("access-control-") for name in headers)
    answer = call(minilm_web_server.http_url, "ServerMetadata", frame(b""), headers={"origin": ALLOWED_ORIGIN})
    assert answer.status == 0
    assert not any(name.startswith("access-control-") for name in answer.headers)
    _, rest_headers, _ = request(minilm_web_server.http_url, "GET", "/v2", headers={"origin": ALLOWED_ORIGIN})
    assert "access-control-allow-origin" not in rest_headers


# ---------------------------------------------------------------------------------------------- defaults
def test_grpc_web_and_the_playground_are_off_by_default(plain_server):
    answer = call(plain_server.http_url, "ModelMetadata", _good_body())
    assert answer.http_status == 404
    assert "grpc-status" not in answer.headers
    assert request(plain_server.http_url, "GET", "/")[0] == 404
    assert request(plain_server.http_url, "GET", "/playground/index.html")[0] == 404


def test_the_playground_is_served_with_a_strict_content_security_policy(digits_web_server):
    status, headers, page = request(digits_web_server.http_url, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'src="/playground/playground.js"' in page
    assert "default-src 'self'" in headers["content-security-policy"]
    assert b"https://" not in page  # nothing from a CDN: clusters are often air-gapped
    status, headers, script = request(digits_web_server.http_url, "GET", "/playground/grpc-web-client.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert b"application/grpc-web+proto" in script
    assert request(digits_web_server.http_url, "GET", "/playground/missing.js")[0] == 404
    assert request(digits_web_server.http_url, "GET", "/playground/../../pyproject.toml")[0] == 404


def test_playground_config_names_the_model_and_offers_one_sample_per_digit(digits_web_server, minilm_web_server):
    status, config = rest_json(digits_web_server, "GET", "/playground/config.json")
    assert status == 200
    assert config["model"] == "digits-mlp"
    assert [sample["label"] for sample in config["samples"]] == list(range(10))
    assert all(len(sample["pixels"]) == 64 and max(sample["pixels"]) <= 16 for sample in config["samples"])
    status, config = rest_json(minilm_web_server, "GET", "/playground/config.json")
    assert (status, config) == (200, {"model": "minilm-l6", "samples": []})


def test_text_format_answers_in_base64(digits_web_server):
    body = base64.b64encode(_good_body())
    status, headers, payload = request(digits_web_server.http_url, "POST", "/inference.GRPCInferenceService/ModelMetadata",
                                       body, {"content-type": TEXT})
    assert status == 200 and headers["content-type"] == "application/grpc-web-text+proto"
    assert base64.b64decode(payload, validate=True)[0] == 0  # a message frame first
