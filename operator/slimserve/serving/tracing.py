"""Traces of inference requests (OpenTelemetry, OTLP over gRPC), off unless an endpoint is configured.

Each inference request is a server span (`POST /v2/models/{name}/infer`, or
`inference.GRPCInferenceService/ModelInfer` for gRPC and gRPC-Web), a child of the caller's W3C
`traceparent` (REST header or gRPC metadata) when it sent one. Its children: `decode` (the wire format to
tensors), `queue_wait` (from joining the batch queue to leaving it) and `encode` (tensors to the wire format).
The model call is one `forward` span per batch: a child of the first request's span, with a link to the
span of every request that rode in it, so each request's trace leads to the batch it ran in.

Off, the endpoints and the batcher call `NO_TRACING` and `NO_TRACE`, whose methods do nothing, and nothing
of OpenTelemetry is imported: the server loads `tracing_otel` (the SDK) only when tracing is on.
"""

from __future__ import annotations

from collections.abc import Iterable

REST_SPAN = "POST /v2/models/{name}/infer"
GRPC_SPAN = "inference.GRPCInferenceService/ModelInfer"
DECODE_SPAN = "decode"
QUEUE_WAIT_SPAN = "queue_wait"
FORWARD_SPAN = "forward"
ENCODE_SPAN = "encode"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


class _Nothing:
    """A context manager that does nothing (cheaper than contextlib.nullcontext, which is created per use)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


NOTHING = _Nothing()


class RequestTrace:
    """One request's trace, used as a context manager around the request; this base class is tracing off."""

    __slots__ = ()
    enabled = False

    def __enter__(self) -> "RequestTrace":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def phase(self, name: str):
        """A context manager timing one step of the request as a child span."""
        return NOTHING

    def enqueued(self) -> None:
        """The request joined the batch queue."""

    def dequeued(self) -> None:
        """The request left the batch queue for a model call."""

    def batch(self, traces: list["RequestTrace"], rows: int):
        """A context manager timing a model call of `rows` rows that ran these requests."""
        return NOTHING

    def annotate(self, attributes: dict) -> None:
        """Attributes of the request's outcome (token counts, why generation ended) on its span."""

    def end(self, error: BaseException | None = None) -> None:
        """End a request whose answer outlives its handler (a generation's stream), failed when `error` is set."""


NO_TRACE = RequestTrace()


class Tracing:
    """Starts request traces; this base class is tracing off."""

    enabled = False

    def start(self, span_name: str, traceparent: str | None, tracestate: str | None, request_id: str,
              model: str) -> RequestTrace:
        return NO_TRACE

    def close(self) -> None:
        """Send the spans still buffered."""


NO_TRACING = Tracing()


def batch_span(traces: Iterable[RequestTrace], rows: int):
    """The `forward` span of a model call, when one of its requests is traced."""
    traced = [trace for trace in traces if trace.enabled]
    return traced[0].batch(traced, rows) if traced else NOTHING
