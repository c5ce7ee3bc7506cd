"""An inference request to a model (or version) this server does not serve is 404 / NOT_FOUND, whatever
its body: the model is looked up before the body is read or decoded."""

from __future__ import annotations

import gzip
import json

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving_helpers import ERROR_SERVER_MAX_BODY, request

ROW = [0.5] * 64
BAD_BODIES = {
    "valid": (json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}]}).encode(), {}),
    "not-json": (b"{not json", {}),
    "no-inputs": (b"{}", {}),
    "wrong-shape": (json.dumps({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}).encode(), {}),
    "header-length-not-a-number": (b"{}", {"Inference-Header-Content-Length": "abc"}),
    "unknown-encoding": (b"{}", {"Content-Encoding": "br"}),
    "gzip-bomb": (gzip.compress(b" " * (ERROR_SERVER_MAX_BODY * 4)), {"Content-Encoding": "gzip"}),
    "oversized": (b"{" + b" " * (ERROR_SERVER_MAX_BODY + 10) + b"}", {}),
}
UNKNOWN = {
    "model": ("/v2/models/nope/infer", "'nope' is not served"),
    "version": ("/v2/models/digits-mlp/versions/v9/infer", "no version 'v9'"),
}


@pytest.mark.parametrize("target", UNKNOWN, ids=list(UNKNOWN))
@pytest.mark.parametrize("body", BAD_BODIES, ids=list(BAD_BODIES))
def test_rest_infer_on_an_unknown_model_is_404_whatever_the_body(mlp_server, target, body):
    path, fragment = UNKNOWN[target]
    payload, headers = BAD_BODIES[body]
    status, answer_headers, answer = request(mlp_server.http_url, "POST", path, payload, headers)
    assert status == 404, answer
    assert answer_headers["content-type"] == "application/json"
    assert fragment in json.loads(answer)["error"]


def _message(model: str, version: str = "") -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    message.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    return message


def _raw_count_mismatch(message):
    row = np.zeros((1, 64), np.float32).tobytes()
    message.raw_input_contents.extend([row, row])
    return message


def _typed_in_the_wrong_field(message):
    message.inputs[0].contents.int_contents.extend([1] * 64)
    return message


def _missing_inputs(message):
    del message.inputs[:]
    return message


@pytest.mark.parametrize("spoil", [_raw_count_mismatch, _typed_in_the_wrong_field, _missing_inputs],
                         ids=["raw-count-mismatch", "typed-wrong-field", "no-inputs"])
@pytest.mark.parametrize(("model", "version", "fragment"), [("nope", "", "not served"), ("digits-mlp", "v9", "no version")],
                         ids=["model", "version"])
def test_grpc_infer_on_an_unknown_model_is_not_found_whatever_the_message(mlp_server, spoil, model, version, fragment):
    with grpc.insecure_channel(mlp_server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(spoil(_message(model, version)), timeout=30)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND, raised.value.details()
    assert fragment in raised.value.details()
