"""The contract between a loaded model and the inference server.

A `Servable` is what `load_servable(uri)` returns: a model rebuilt from a verified artifact (or a builtin
demo model), with its Open Inference Protocol signature and a batched `predict`. The server knows nothing
else about models. Servables may also offer `warmup()` (run a tiny batch); `load_servable` has already
done any load-time work (compiling a quantized model) before it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor in Open Inference Protocol terms."""

    name: str
    datatype: str  # OIP datatype: "FP32", "INT64", "BYTES", ...
    shape: tuple[int, ...]  # -1 marks a variable dimension; the first is the batch dimension


@dataclass(frozen=True)
class ModelInfo:
    name: str  # model family, e.g. "digits-cnn"
    version: str  # artifact digest prefix or "builtin"
    platform: str = "pytorch"
    digest: str = ""  # sha256 of the artifact manifest ("" for builtin models)
    inputs: tuple[TensorSpec, ...] = field(default_factory=tuple)
    outputs: tuple[TensorSpec, ...] = field(default_factory=tuple)
    device: str = "cpu"  # where it runs: cpu, cuda:0...
    precision: str = "fp32"  # what it computes in: fp32, fp16, bf16, or its quantization (int8-dynamic...)


@runtime_checkable
class Servable(Protocol):
    info: ModelInfo

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Arrays are batched along axis 0; BYTES tensors are numpy object arrays of `bytes`.

        Raises `ValueError` with a message naming the tensor for inputs it cannot take (wrong shape, dtype,
        non-finite values); the server maps that to a 400 / INVALID_ARGUMENT.
        """
        ...
