"""The served model: loads a Servable from its URI, warms it up, reports readiness, runs predict."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from slimserve.models.servable import ModelInfo, Servable, TensorSpec

log = logging.getLogger(__name__)

Loader = Callable[[str], Servable]


def artifact_loader(
    expected_digest: str | None = None, device: str = "cpu", cuda_graphs: bool = False, *, allow_outside_budget: bool = False
) -> Loader:
    """`load_servable`, which verifies every file's sha256; `expected_digest` also pins the manifest's;
    `device` is a policy name (auto, cpu, cuda, cuda:N): a GPU asked for but not usable fails the load; an
    artifact that missed its accuracy budget is refused unless `allow_outside_budget`."""

    def load(uri: str) -> Servable:
        from slimserve.models import load_servable

        return load_servable(
            uri, expected_digest=expected_digest, device=device, cuda_graphs=cuda_graphs,
            allow_outside_budget=allow_outside_budget,
        )

    return load


class ServedModel:
    """One model under the name clients use; `ready` only after load and warm-up succeeded."""

    def __init__(self, uri: str, name: str | None = None, loader: Loader | None = None) -> None:
        self.uri = uri
        self._requested_name = name
        self._loader = loader or artifact_loader()
        self._servable: Servable | None = None
        self.ready = False

    @classmethod
    def from_servable(cls, servable: Servable, name: str | None = None) -> "ServedModel":
        model = cls(uri=f"object://{servable.info.name}", name=name, loader=lambda _uri: servable)
        return model

    @property
    def name(self) -> str:
        if self._requested_name:
            return self._requested_name
        return self._servable.info.name if self._servable is not None else ""

    @property
    def info(self) -> ModelInfo:
        if self._servable is None:
            raise RuntimeError("model not loaded")
        return self._servable.info

    @property
    def loaded(self) -> bool:
        return self._servable is not None

    @property
    def servable(self) -> Servable:
        if self._servable is None:
            raise RuntimeError("model not loaded")
        return self._servable

    @property
    def generates_text(self) -> bool:
        """A decoder: served by the generation routes, not OIP infer."""
        return hasattr(self._servable, "decoder")

    def load(self, warmup_batch_sizes: tuple[int, ...] = (1,), mark_ready: bool = True) -> None:
        """Load (blocking; call from a worker thread) and warm up at the given batch sizes; then ready,
        unless `mark_ready` is False (the caller has more to do first and sets `ready` itself)."""
        start = time.perf_counter()
        self._servable = self._loader(self.uri)
        loaded = time.perf_counter()
        for rows in warmup_batch_sizes:
            self._servable.predict(self.example_inputs(rows))
        info = self._servable.info
        log.info(
            "model %s (%s, version %s) loaded on %s in %s in %.2fs, warmed up in %.2fs",
            self.name, self.uri, info.version, info.device, info.precision, loaded - start,
            time.perf_counter() - loaded,
        )
        self.ready = mark_ready

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._servable is not None
        return self._servable.predict(inputs)

    def example_inputs(self, rows: int) -> dict[str, np.ndarray]:
        """Valid inputs of `rows` rows: the servable's own where zeros or a short text cannot stand for its
        inputs (encoded images), else `example_inputs` of its signature."""
        own = getattr(self._servable, "example_inputs", None)
        return own(rows) if own is not None else example_inputs(self.info.inputs, rows)

    def metadata(self) -> dict:
        info = self.info
        return {
            "name": self.name,
            "versions": [info.version],
            "platform": info.platform,
            "inputs": [_tensor_metadata(spec) for spec in info.inputs],
            "outputs": [_tensor_metadata(spec) for spec in info.outputs],
            "parameters": {"device": info.device, "precision": info.precision,
                           **getattr(self._servable, "parameters", {})},
        }


def _tensor_metadata(spec: TensorSpec) -> dict:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def example_inputs(specs: tuple[TensorSpec, ...], rows: int) -> dict[str, np.ndarray]:
    """Valid inputs of `rows` rows for a signature: zeros, or a short text for BYTES (warm-up only)."""
    from slimserve.serving.tensors import NUMPY_DTYPES

    examples = {}
    for spec in specs:
        shape = (rows, *(1 if dim == -1 else dim for dim in spec.shape[1:]))
        if spec.datatype == "BYTES":
            array = np.empty(shape, dtype=object)
            array.fill(b"warm up the model")
        else:
            array = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
        examples[spec.name] = array
    return examples
