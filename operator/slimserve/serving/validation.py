"""Checks an inference request against the model's signature, one request at a time.

Runs before a request joins a batch, so a bad request is refused alone and never fails its batch-mates.
Order matters for the messages: names, then datatype and shape (the header), then the data itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slimserve.models.servable import ModelInfo, TensorSpec
from slimserve.serving.errors import InvalidInput
from slimserve.serving.protocol import InferRequest, InputTensor, RequestedOutput
from slimserve.serving.tensors import check_finite, decode_raw, decode_sequence

# Output parameters asking for extensions this server lacks; other unknown parameters are ignored.
UNSUPPORTED_OUTPUT_PARAMETERS = frozenset({"classification"})


@dataclass
class ValidatedRequest:
    inputs: dict[str, np.ndarray]
    rows: int  # size of the batch dimension, shared by all inputs
    outputs: list[RequestedOutput]


def validate(request: InferRequest, info: ModelInfo, max_batch_size: int) -> ValidatedRequest:
    specs = {spec.name: spec for spec in info.inputs}
    _check_input_names(request.inputs, specs)
    rows = None
    for tensor in request.inputs:
        spec = specs[tensor.name]
        _check_header(tensor, spec)
        if rows is None:
            rows = tensor.shape[0]
        elif tensor.shape[0] != rows:
            raise InvalidInput(
                f"input '{tensor.name}': batch size {tensor.shape[0]} differs from the {rows} of the other inputs"
            )
    assert rows is not None  # the model has at least one input, checked above
    if rows > max_batch_size:
        raise InvalidInput(f"batch of {rows} rows is above this server's max batch size {max_batch_size}")
    arrays = {tensor.name: _decode(tensor) for tensor in request.inputs}
    return ValidatedRequest(inputs=arrays, rows=rows, outputs=_select_outputs(request, info))


def _check_input_names(tensors: list[InputTensor], specs: dict[str, TensorSpec]) -> None:
    names = [tensor.name for tensor in tensors]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidInput(f"input {duplicates[0]!r} is given more than once")
    unknown = [name for name in names if name not in specs]
    if unknown:
        raise InvalidInput(f"unknown input {unknown[0]!r}; the model takes {sorted(specs)}")
    missing = [name for name in specs if name not in names]
    if missing:
        raise InvalidInput(f"missing input {missing[0]!r}; the model takes {sorted(specs)}")


def _check_header(tensor: InputTensor, spec: TensorSpec) -> None:
    what = f"input '{tensor.name}'"
    if tensor.datatype != spec.datatype:
        raise InvalidInput(f"{what}: datatype {tensor.datatype} does not match the model's {spec.datatype}")
    shape = tensor.shape
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"{what}: shape {list(shape)} has a negative dimension")
    if len(shape) != len(spec.shape):
        raise InvalidInput(f"{what}: shape {list(shape)} has {len(shape)} dimensions, the model's {list(spec.shape)} has {len(spec.shape)}")
    if shape[0] < 1:
        raise InvalidInput(f"{what}: the batch dimension (shape[0]) must be at least 1")
    for axis, (got, want) in enumerate(zip(shape, spec.shape)):
        if want != -1 and got != want:
            raise InvalidInput(f"{what}: shape {list(shape)} does not match the model's {list(spec.shape)} at dimension {axis}")


def _decode(tensor: InputTensor) -> np.ndarray:
    what = f"input '{tensor.name}'"
    if isinstance(tensor.payload, (bytes, bytearray, memoryview)):
        array = decode_raw(tensor.payload, tensor.datatype, tensor.shape, what)
    else:
        array = decode_sequence(tensor.payload, tensor.datatype, tensor.shape, what)
    check_finite(array, tensor.datatype, what)
    return array


def _select_outputs(request: InferRequest, info: ModelInfo) -> list[RequestedOutput]:
    known = [spec.name for spec in info.outputs]
    if request.outputs is None:
        return [RequestedOutput(name, binary=request.binary_outputs) for name in known]
    for output in request.outputs:
        if output.name not in known:
            raise InvalidInput(f"unknown output {output.name!r} requested; the model returns {known}")
        for key in output.parameters:
            if key in UNSUPPORTED_OUTPUT_PARAMETERS:
                raise InvalidInput(f"output {output.name!r}: parameter {key!r} is not supported by this server")
    return request.outputs
