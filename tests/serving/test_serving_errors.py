"""Bad input of every kind: a clear 4xx or gRPC status naming the problem, and the server keeps serving."""

from __future__ import annotations

import gzip
import json
import struct

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving_helpers import ERROR_SERVER_MAX_BATCH, ERROR_SERVER_MAX_BODY, post_json, request

INFER = "/v2/models/digits-mlp/infer"
ROW = [0.5] * 64


def tensor(shape=(1, 64), datatype="FP32", data=None, name="input", **extra):
    body = {"name": name, "shape": list(shape), "datatype": datatype, **extra}
    if data is not None:
        body["data"] = data
    return body


def doc(*inputs, **extra) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def binary_body(values: np.ndarray, shape=(1, 64), datatype="FP32", trailing=b"") -> tuple[bytes, dict]:
    raw = values.tobytes()
    header = doc(tensor(shape, datatype, parameters={"binary_data_size": len(raw)}))
    return header + raw + trailing, {"Inference-Header-Content-Length": str(len(header))}


NAN_ROW = np.full((1, 64), np.nan, dtype=np.float32)
INF_ROW = np.full((1, 64), np.inf, dtype=np.float32)

# (id, method, path, body, headers, status, fragment of the error message)
REST_CASES = [
    ("non-json", "POST", INFER, b"{not json", {}, 400, "not valid JSON"),
    ("json-array", "POST", INFER, b"[1, 2]", {}, 400, "must be a JSON object"),
    ("no-inputs", "POST", INFER, b"{}", {}, 400, "'inputs'"),
    ("unknown-model", "POST", "/v2/models/nope/infer", doc(tensor(data=ROW)), {}, 404, "'nope' is not served"),
    ("unknown-version", "POST", "/v2/models/digits-mlp/versions/v9/infer", doc(tensor(data=ROW)), {}, 404, "no version 'v9'"),
    ("wrong-inner-dim", "POST", INFER, doc(tensor((1, 63), data=[0.5] * 63)), {}, 400, "does not match the model's [-1, 64]"),
    ("wrong-rank", "POST", INFER, doc(tensor((64,), data=ROW)), {}, 400, "dimensions"),
    ("data-shorter-than-shape", "POST", INFER, doc(tensor((2, 64), data=ROW)), {}, 400, "needs 128 elements, data has 64"),
    ("wrong-datatype", "POST", INFER, doc(tensor(datatype="FP64", data=ROW)), {}, 400, "datatype FP64 does not match the model's FP32"),
    ("bytes-for-fp32", "POST", INFER, doc(tensor(datatype="BYTES", data=["x"] * 64)), {}, 400, "datatype BYTES does not match"),
    ("strings-in-fp32", "POST", INFER, doc(tensor(data=["0.5"] * 64)), {}, 400, "holds strings"),
    ("unknown-input", "POST", INFER, doc(tensor(name="pixels", data=ROW)), {}, 400, "unknown input 'pixels'"),
    ("duplicate-input", "POST", INFER, doc(tensor(data=ROW), tensor(data=ROW)), {}, 400, "more than once"),
    ("nan", "POST", INFER, *binary_body(NAN_ROW), 400, "NaN or infinity"),
    ("infinity", "POST", INFER, *binary_body(INF_ROW), 400, "NaN or infinity"),
    ("batch-above-limit", "POST", INFER,
     doc(tensor((ERROR_SERVER_MAX_BATCH + 1, 64), data=ROW * (ERROR_SERVER_MAX_BATCH + 1))), {}, 400, "max batch size"),
    ("empty-batch", "POST", INFER, doc(tensor((0, 64), data=[])), {}, 400, "at least 1"),
    ("negative-dim", "POST", INFER, doc(tensor((-1, 64), data=ROW)), {}, 400, "negative dimension"),
    ("shape-not-integers", "POST", INFER, doc(tensor(("1", 64), data=ROW)), {}, 400, "'shape' must be an array of integers"),
    ("ragged-data", "POST", INFER, doc(tensor((2, 64), data=[ROW, ROW[:10]])), {}, 400, "ragged"),
    ("no-data", "POST", INFER, doc(tensor()), {}, 400, "'data' is missing"),
    ("id-not-string", "POST", INFER, doc(tensor(data=ROW), id=7), {}, 400, "'id' must be a string"),
    ("unknown-output", "POST", INFER, doc(tensor(data=ROW), outputs=[{"name": "probs"}]), {}, 400, "unknown output 'probs'"),
    ("classification-output", "POST", INFER,
     doc(tensor(data=ROW), outputs=[{"name": "logits", "parameters": {"classification": 3}}]), {}, 400, "'classification' is not supported"),
    ("oversized-body", "POST", INFER, b"{" + b" " * (ERROR_SERVER_MAX_BODY + 10) + b"}", {}, 413, "above the limit"),
    ("gzip-bomb", "POST", INFER, gzip.compress(b" " * (ERROR_SERVER_MAX_BODY * 4)), {"Content-Encoding": "gzip"}, 413, "decompressed"),
    ("unknown-encoding", "POST", INFER, doc(tensor(data=ROW)), {"Content-Encoding": "br"}, 415, "'br' is not supported"),
    ("binary-size-past-end", "POST", INFER,
     doc(tensor(parameters={"binary_data_size": 256})) + b"\0" * 16, {"Inference-Header-Content-Length": str(len(doc(tensor(parameters={"binary_data_size": 256}))))},
     400, "runs past the end"),
    ("binary-wrong-length", "POST", INFER, *binary_body(np.zeros((1, 32), np.float32)), 400, "raw contents hold 128 bytes"),
    ("binary-trailing-bytes", "POST", INFER, *binary_body(np.zeros((1, 64), np.float32), trailing=b"xx"), 400, "after the inputs"),
    ("header-length-not-a-number", "POST", INFER, doc(tensor(data=ROW)), {"Inference-Header-Content-Length": "abc"}, 400, "not a number"),
    ("header-length-past-body", "POST", INFER, doc(tensor(data=ROW)), {"Inference-Header-Content-Length": "99999"}, 400, "outside the body"),
    ("unknown-route", "GET", "/v3/whatever", None, {}, 404, "no endpoint"),
    ("get-on-infer", "GET", INFER, None, {}, 405, "not allowed"),
    ("metadata-unknown-model", "GET", "/v2/models/nope", None, {}, 404, "not served"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "fragment"),
    [case[1:] for case in REST_CASES],
    ids=[case[0] for case in REST_CASES],
)
def test_rest_rejects_bad_requests_clearly(mlp_server, method, path, body, headers, status, fragment):
    got_status, got_headers, got_body = request(mlp_server.http_url, method, path, body, headers)
    assert got_status == status, got_body
    assert got_headers["content-type"] == "application/json"
    error = json.loads(got_body)["error"]
    assert fragment in error


def grpc_request(inputs, raw=None, model="digits-mlp", version="", outputs=()):
    message = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for name, datatype, shape, typed in inputs:
        entry = message.inputs.add(name=name, datatype=datatype, shape=list(shape))
        for field, values in (typed or {}).items():
            getattr(entry.contents, field).extend(values)
    message.raw_input_contents.extend(raw or [])
    for name in outputs:
        message.outputs.add(name=name)
    return message


ROW_BYTES = np.full((1, 64), 0.5, np.float32).tobytes()
INPUT = ("input", "FP32", (1, 64), None)

# (id, request, status code, fragment)
GRPC_CASES = [
    ("unknown-model", grpc_request([INPUT], [ROW_BYTES], model="nope"), grpc.StatusCode.NOT_FOUND, "not served"),
    ("unknown-version", grpc_request([INPUT], [ROW_BYTES], version="v9"), grpc.StatusCode.NOT_FOUND, "no version"),
    ("raw-wrong-length", grpc_request([INPUT], [ROW_BYTES[:-4]]), grpc.StatusCode.INVALID_ARGUMENT, "raw contents hold 252 bytes"),
    ("raw-count-mismatch", grpc_request([INPUT], [ROW_BYTES, ROW_BYTES]), grpc.StatusCode.INVALID_ARGUMENT, "2 entries for 1 inputs"),
    ("raw-and-typed", grpc_request([("input", "FP32", (1, 64), {"fp32_contents": ROW})], [ROW_BYTES]),
     grpc.StatusCode.INVALID_ARGUMENT, "contents must be empty"),
    ("typed-wrong-field", grpc_request([("input", "FP32", (1, 64), {"int_contents": [1] * 64})]),
     grpc.StatusCode.INVALID_ARGUMENT, "carries its data in fp32_contents"),
    ("typed-too-few", grpc_request([("input", "FP32", (1, 64), {"fp32_contents": ROW[:10]})]),
     grpc.StatusCode.INVALID_ARGUMENT, "needs 64 elements, data has 10"),
    ("nan-raw", grpc_request([INPUT], [NAN_ROW.tobytes()]), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    ("wrong-shape", grpc_request([("input", "FP32", (1, 32), None)], [ROW_BYTES[:128]]), grpc.StatusCode.INVALID_ARGUMENT, "does not match"),
    ("bytes-for-fp32", grpc_request([("input", "BYTES", (1, 64), None)], [b""]), grpc.StatusCode.INVALID_ARGUMENT, "datatype BYTES"),
    ("batch-above-limit", grpc_request([("input", "FP32", (ERROR_SERVER_MAX_BATCH + 1, 64), None)], [ROW_BYTES * (ERROR_SERVER_MAX_BATCH + 1)]),
     grpc.StatusCode.INVALID_ARGUMENT, "max batch size"),
    ("unknown-output", grpc_request([INPUT], [ROW_BYTES], outputs=["probs"]), grpc.StatusCode.INVALID_ARGUMENT, "unknown output"),
    ("missing-input", grpc_request([]), grpc.StatusCode.INVALID_ARGUMENT, "missing input 'input'"),
    ("oversized-message", grpc_request([("input", "FP32", (1, 64), None)], [b"\0" * (ERROR_SERVER_MAX_BODY + 1)]),
     grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
]


@pytest.mark.parametrize(("message", "code", "fragment"), [c[1:] for c in GRPC_CASES], ids=[c[0] for c in GRPC_CASES])
def test_grpc_rejects_bad_requests_with_the_matching_status(mlp_server, message, code, fragment):
    with grpc.insecure_channel(mlp_server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message, timeout=30)
    assert raised.value.code() == code
    assert fragment in raised.value.details()


def test_grpc_metadata_of_an_unknown_model_is_not_found(mlp_server):
    with grpc.insecure_channel(mlp_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for call, message in ((stub.ModelMetadata, service_pb2.ModelMetadataRequest(name="nope")),
                              (stub.ModelReady, service_pb2.ModelReadyRequest(name="nope"))):
            with pytest.raises(grpc.RpcError) as raised:
                call(message, timeout=30)
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_malformed_raw_text_is_refused(minilm_server):
    raw = struct.pack("<I", 100) + b"short"
    message = grpc_request([("text", "BYTES", (1,), None)], [raw], model="minilm-l6")
    with grpc.insecure_channel(minilm_server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "past the end" in raised.value.details()


def test_the_server_still_serves_after_all_the_bad_requests(mlp_server):
    status, body = post_json(mlp_server.http_url, INFER, {"inputs": [tensor(data=ROW)]})
    assert status == 200 and body["outputs"][0]["shape"] == [1, 10]
    assert request(mlp_server.http_url, "GET", "/v2/health/live")[0] == 200
    assert mlp_server.process.poll() is None
