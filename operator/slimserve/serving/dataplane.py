"""The protocol-independent data plane: health, metadata and inference over one served model.

REST and gRPC endpoints translate their wire format to `InferRequest` and back; all validation,
batching and error decisions happen here (errors are `slimserve.serving.errors` types).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from slimserve import __version__
from slimserve.serving.access_log import AccessLog
from slimserve.serving.batching import BatchShapeError, Batcher, DirectRunner
from slimserve.serving.errors import InferenceFailed, InvalidInput, ModelNotFound, ModelNotReady
from slimserve.serving.metrics import ServerMetrics
from slimserve.serving.model import ServedModel
from slimserve.serving.protocol import InferRequest, InferResponse, OutputTensor
from slimserve.serving.tensors import as_datatype
from slimserve.serving.tracing import NO_TRACE, NO_TRACING, RequestTrace, Tracing

if TYPE_CHECKING:  # imported by the server only when payload logging is on
    from slimserve.serving.payload_log import PayloadLogger
from slimserve.serving.validation import validate

SERVER_NAME = "slimserve"
# Response parameter: the rows of the model call a request ran in (its own rows plus any it was batched with).
BATCH_SIZE_PARAMETER = "batch_size"
# Extensions beyond the core protocol: the REST binary tensor data extension (Triton's name for it).
EXTENSIONS = ("binary_tensor_data",)


class DataPlane:
    def __init__(
        self, model: ServedModel, runner: Batcher | DirectRunner, metrics: ServerMetrics, max_batch_size: int,
        access_log: AccessLog | None = None, tracing: Tracing = NO_TRACING, payload_log: PayloadLogger | None = None,
    ) -> None:
        self.model = model
        self.runner = runner
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.access_log = access_log or AccessLog(enabled=False)  # every endpoint's one line per request
        self.tracing = tracing  # inference requests' spans (NO_TRACING: off)
        self.payload_log = payload_log  # inference payloads as CloudEvents (None: off)
        self.shutting_down = False

    # --- health -------------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.model.ready and not self.shutting_down

    def model_ready(self, name: str, version: str = "") -> bool:
        self._resolve(name, version, need_ready=False)
        return self.model.ready and not self.shutting_down

    # --- metadata -----------------------------------------------------------------------------
    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str = "") -> dict:
        self._resolve(name, version, need_ready=True)
        return self.model.metadata()

    def _resolve(self, name: str, version: str, need_ready: bool) -> None:
        if not self.model.loaded:
            if need_ready:
                raise ModelNotReady(f"model {name!r} is not ready yet (loading)")
            if name == self.model.name:
                return
            raise ModelNotFound(f"model {name!r} is not served here")
        if name != self.model.name:
            raise ModelNotFound(f"model {name!r} is not served here; this server serves {self.model.name!r}")
        if version and version != self.model.info.version:
            raise ModelNotFound(
                f"model {name!r} has no version {version!r}; the served version is {self.model.info.version!r}"
            )

    # --- inference ----------------------------------------------------------------------------
    def check_inference_target(self, name: str, version: str = "") -> None:
        """Raises ModelNotFound or ModelNotReady for a request to `name`: an endpoint calls it before it
        reads or decodes the request, so an unknown model is 404 (NOT_FOUND) whatever the body; a decoder's
        infer is InvalidInput pointing at its generate routes."""
        self.check_generation_target(name, version)
        if self.model.generates_text:
            from slimserve.serving.generation.decoder import refusal

            raise InvalidInput(refusal(self.model.name))

    def check_generation_target(self, name: str, version: str = "") -> None:
        """`check_inference_target` of the generate extension's routes (a decoder's)."""
        self._resolve(name, version, need_ready=True)
        if not self.model.ready:
            raise ModelNotReady(f"model {name!r} is not ready yet (warming up)")

    async def infer(self, request: InferRequest, trace: RequestTrace = NO_TRACE) -> InferResponse:
        """Validate, batch, run and package one complete request. Raises ServingError subclasses."""
        self.check_inference_target(request.model_name, request.model_version)
        checked = validate(request, self.model.info, self.max_batch_size)
        try:
            results = await self.runner.submit(checked.inputs, checked.rows, trace)
        except ValueError as error:  # the servable refused the input: the request's fault
            raise InvalidInput(str(error)) from error
        except BatchShapeError as error:
            raise InferenceFailed(str(error)) from error
        except Exception as error:
            raise InferenceFailed(f"model {self.model.name!r} failed: {type(error).__name__}: {error}") from error
        specs = {spec.name: spec for spec in self.model.info.outputs}
        outputs = []
        for wanted in checked.outputs:
            if wanted.name not in results:
                raise InferenceFailed(f"model {self.model.name!r} did not return its output {wanted.name!r}")
            spec = specs[wanted.name]
            array = as_datatype(results[wanted.name], spec.datatype)
            outputs.append(OutputTensor(wanted.name, spec.datatype, tuple(array.shape), array, wanted.binary))
        return InferResponse(
            model_name=self.model.name, model_version=self.model.info.version, outputs=outputs, id=request.id,
            parameters={BATCH_SIZE_PARAMETER: results.batch_size},
        )


class RequestTimer:
    """Counts an inference request as in flight and observes its latency; use as a context manager."""

    __slots__ = ("_metrics", "_protocol", "_start")

    def __init__(self, metrics: ServerMetrics, protocol: str) -> None:
        self._metrics = metrics
        self._protocol = protocol

    def __enter__(self) -> "RequestTimer":
        self._start = time.perf_counter()
        self._metrics.inflight.inc()
        return self

    def __exit__(self, *exc) -> None:
        self._metrics.inflight.dec()
        self._metrics.request_seconds.labels(self._protocol).observe(time.perf_counter() - self._start)
