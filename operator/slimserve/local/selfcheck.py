"""One real request to the local server, over REST and gRPC, with an input the model's signature asks for; for
a decoder, one greedy completion over the OpenAI-compatible route and the OIP generate extension."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from slimserve.serving.proto import open_inference_v2_pb2 as pb

SAMPLE_SENTENCE = "SlimServe makes models smaller and faster."
SAMPLE_PROMPT = "def fibonacci(n):\n"  # builtin://tiny-lm completes Python
COMPLETION_TOKENS = 32


@dataclass(frozen=True)
class SelfCheck:
    request: str  # what was sent, for people
    rest_answer: str
    grpc_answer: str
    agree: bool
    completion: bool = False  # a decoder's: the answers are one greedy completion over /v1 and OIP generate


def _get_json(url: str, timeout: float = 10) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _post_json(url: str, body: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def completion_check(http: str, model: str) -> SelfCheck:
    """A greedy completion of SAMPLE_PROMPT over /v1/completions and over OIP generate: the same text twice."""
    openai = _post_json(f"{http}/v1/completions", {
        "model": model, "prompt": SAMPLE_PROMPT, "max_tokens": COMPLETION_TOKENS, "temperature": 0})
    oip = _post_json(f"{http}/v2/models/{model}/generate", {
        "text_input": SAMPLE_PROMPT, "parameters": {"max_tokens": COMPLETION_TOKENS, "temperature": 0}})
    completion, generated = openai["choices"][0]["text"], oip["text_output"]
    return SelfCheck(request=f"complete {SAMPLE_PROMPT!r} (greedy, {COMPLETION_TOKENS} tokens)",
                     rest_answer=SAMPLE_PROMPT + completion, grpc_answer=SAMPLE_PROMPT + generated,
                     agree=completion == generated, completion=True)


def sample_input(tensor: dict[str, Any]) -> tuple[np.ndarray, str, Any]:
    """(array, description, expected) for one input tensor of the model's metadata."""
    if tensor["datatype"] == "BYTES":
        return np.array([SAMPLE_SENTENCE.encode()], dtype=object), repr(SAMPLE_SENTENCE), None
    shape = [1 if d == -1 else d for d in tensor["shape"]]
    if shape == [1, 64]:  # the digits models: a held-out 8x8 image
        from slimserve.models.digits import digits_data

        data = digits_data()
        return data.x_test[:1].astype(np.float32), "a held-out 8x8 digit", int(data.y_test[0])
    return np.zeros(shape, dtype=np.float32), f"zeros {shape}", None


def _describe(name: str, values: np.ndarray) -> str:
    if values.ndim == 2 and values.shape[1] == 10:
        return f"{name}: predicted digit {int(values[0].argmax())}"
    flat = values.reshape(-1)
    head = ", ".join(f"{v:.4f}" for v in flat[:4])
    return f"{name}: shape {list(values.shape)}, [{head}, ...], L2 norm {float(np.linalg.norm(flat)):.4f}"


def rest_infer(http: str, model: str, name: str, array: np.ndarray) -> np.ndarray:
    datatype = "BYTES" if array.dtype == object else "FP32"
    data = [v.decode() for v in array.reshape(-1)] if datatype == "BYTES" else array.reshape(-1).tolist()
    body = json.dumps({"inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}]})
    request = urllib.request.Request(
        f"{http}/v2/models/{model}/infer", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        output = json.loads(response.read())["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def grpc_infer(address: str, model: str, name: str, array: np.ndarray) -> np.ndarray:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, shape=list(array.shape))
    if array.dtype == object:
        tensor.datatype = "BYTES"
        tensor.contents.bytes_contents.extend(array.reshape(-1).tolist())
    else:
        tensor.datatype = "FP32"
        tensor.contents.fp32_contents.extend(array.reshape(-1).tolist())
    with grpc.insecure_channel(address) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        response = infer(pb.ModelInferRequest(model_name=model, inputs=[tensor]), timeout=30)
    output = response.outputs[0]
    if response.raw_output_contents:
        values = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    else:
        values = np.asarray(output.contents.fp32_contents, dtype=np.float32)
    return values.reshape(list(output.shape))


def self_check(http: str, grpc_address: str, model: str) -> SelfCheck:
    metadata = _get_json(f"{http}/v2/models/{model}")
    if metadata.get("parameters", {}).get("task") == "text-generation":
        return completion_check(http, model)
    tensor = metadata["inputs"][0]
    array, described, expected = sample_input(tensor)
    output_name = metadata["outputs"][0]["name"]
    rest = rest_infer(http, model, tensor["name"], array)
    over_grpc = grpc_infer(grpc_address, model, tensor["name"], array)
    request = described + (f" (label {expected})" if expected is not None else "")
    return SelfCheck(
        request=request,
        rest_answer=_describe(output_name, rest),
        grpc_answer=_describe(output_name, over_grpc),
        agree=bool(np.allclose(rest, over_grpc, atol=1e-5)),
    )
