"""Protocol-independent inference request and response, what the REST and gRPC codecs produce and read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Parameters = dict[str, Any]


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    # Undecoded data: `bytes`/`memoryview` in the raw form, a sequence (JSON list, typed contents) otherwise.
    payload: Any
    parameters: Parameters = field(default_factory=dict)


@dataclass
class RequestedOutput:
    name: str
    binary: bool = False  # REST binary tensor extension: send the data after the JSON header
    parameters: Parameters = field(default_factory=dict)


@dataclass
class InferRequest:
    model_name: str
    model_version: str
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None = None  # None: every output of the model
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
    binary_outputs: bool = False  # default of `RequestedOutput.binary` for outputs not listed


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    binary: bool = False


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[OutputTensor]
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
