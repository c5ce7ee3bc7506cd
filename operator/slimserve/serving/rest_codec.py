"""JSON (and the binary tensor data extension) <-> InferRequest / InferResponse for the REST endpoint.

Binary extension (as Triton and tritonclient speak it): the header `Inference-Header-Content-Length: N`
says the first N body bytes are the JSON; each input whose `parameters.binary_data_size` is set takes
its raw bytes from what follows, in input order. Outputs asked for with `parameters.binary_data: true`
(or all outputs, with the request parameter `binary_data_output: true`) come back the same way.
"""

from __future__ import annotations

from typing import Any

import orjson

from slimserve.serving.errors import InvalidInput
from slimserve.serving.protocol import InferRequest, InferResponse, InputTensor, RequestedOutput
from slimserve.serving.tensors import encode_raw, json_data

HEADER_LENGTH = "inference-header-content-length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"


def parse_infer_request(body: bytes, header_length: int | None, model_name: str, model_version: str) -> InferRequest:
    if header_length is not None and not 0 < header_length <= len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length {header_length} is outside the body of {len(body)} bytes"
        )
    json_part = body if header_length is None else body[:header_length]
    binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    document = loads(json_part)
    if not isinstance(document, dict):
        raise InvalidInput("request body must be a JSON object")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    parameters = _object(document.get("parameters"), "parameters")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty array of tensors")
    inputs, used = [], 0
    for index, raw in enumerate(raw_inputs):
        tensor, size = _input_tensor(raw, index, binary, used)
        inputs.append(tensor)
        used += size
    if used != len(binary):
        raise InvalidInput(f"body has {len(binary) - used} bytes after the inputs' binary data")
    binary_default = parameters.get("binary_data_output") is True
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        outputs=_requested_outputs(document.get("outputs"), binary_default),
        id=request_id,
        parameters=parameters,
        binary_outputs=binary_default,
    )


def loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"request body is not valid JSON: {error}") from None


def _object(value: Any, field: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"'{field}' must be a JSON object")
    return value


def _input_tensor(raw: Any, index: int, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    field = f"inputs[{index}]"
    if not isinstance(raw, dict):
        raise InvalidInput(f"{field} must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{field}.name must be a non-empty string")
    field = f"input '{name}'"
    datatype = raw.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidInput(f"{field}: 'datatype' must be a string such as \"FP32\"")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidInput(f"{field}: 'shape' must be an array of integers")
    parameters = _object(raw.get("parameters"), f"{field} parameters")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in raw:
            raise InvalidInput(f"{field}: 'data' is missing (or set parameters.binary_data_size)")
        return InputTensor(name, datatype, tuple(shape), raw["data"], parameters), 0
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"{field}: parameters.binary_data_size must be a non-negative integer")
    if "data" in raw:
        raise InvalidInput(f"{field}: give either 'data' or binary data, not both")
    if offset + size > len(binary):
        raise InvalidInput(f"{field}: binary_data_size {size} runs past the end of the body")
    return InputTensor(name, datatype, tuple(shape), binary[offset : offset + size], parameters), size


def _requested_outputs(raw: Any, binary_default: bool) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be an array")
    outputs = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{index}] must be an object with a string 'name'")
        parameters = _object(item.get("parameters"), f"outputs[{index}].parameters")
        binary = parameters.get("binary_data", binary_default) is True
        outputs.append(RequestedOutput(item["name"], binary=binary, parameters=parameters))
    return outputs


def render_infer_response(response: InferResponse) -> tuple[bytes, str, int | None]:
    """Body, content type, and the JSON header length when binary outputs follow it (else None)."""
    outputs, blobs = [], []
    for output in response.outputs:
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": list(output.shape)}
        if output.binary:
            blob = encode_raw(output.data, output.datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = json_data(output.data, output.datatype, f"output '{output.name}'")
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id is not None:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = response.parameters
    document["outputs"] = outputs
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, JSON_CONTENT_TYPE, None
    return header + b"".join(blobs), BINARY_CONTENT_TYPE, len(header)


def dumps(document: Any) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
