"""The OpenTelemetry side of `tracing`: the SDK's tracer, a batch span processor and the OTLP/gRPC exporter.

Imported only when tracing is on. Spans are ended on the event loop and exported from the SDK's own
thread in batches. A caller's traceparent decides for its request (sampled or not, as its flag says); a
request without one is sampled with probability `sample_rate` before anything of the SDK is touched, so an
unsampled request costs one random number: no span, no context, no ids.
"""

from __future__ import annotations

import random
import time

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from slimserve.serving.observability import TracingSettings
from slimserve.serving.tracing import (
    FORWARD_SPAN, NO_TRACE, QUEUE_WAIT_SPAN, TRACEPARENT, TRACESTATE, RequestTrace, Tracing,
)

_PROPAGATOR = TraceContextTextMapPropagator()


class _Span:
    """Ends a span on exit, marked as an error when an exception left it."""

    __slots__ = ("span",)

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def __enter__(self) -> trace.Span:
        return self.span

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None:
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self.span.end()


class _SpanTrace(RequestTrace):
    __slots__ = ("_tracer", "span", "_context", "_queued_ns")
    enabled = True

    def __init__(self, tracer: trace.Tracer, span: trace.Span) -> None:
        self._tracer = tracer
        self.span = span
        self._context = trace.set_span_in_context(span)
        self._queued_ns = 0

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None:
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self.span.end()

    def annotate(self, attributes: dict) -> None:
        self.span.set_attributes(attributes)

    def end(self, error: BaseException | None = None) -> None:
        self.__exit__(None if error is None else type(error), error, None)

    def phase(self, name: str) -> _Span:
        return _Span(self._tracer.start_span(name, context=self._context))

    def enqueued(self) -> None:
        self._queued_ns = time.time_ns()

    def dequeued(self) -> None:
        if self._queued_ns:
            self._tracer.start_span(QUEUE_WAIT_SPAN, context=self._context, start_time=self._queued_ns).end()

    def batch(self, traces: list[RequestTrace], rows: int) -> _Span:
        links = [Link(other.span.get_span_context()) for other in traces]
        return _Span(self._tracer.start_span(
            FORWARD_SPAN, context=self._context, links=links,
            attributes={"slimserve.batch.rows": rows, "slimserve.batch.requests": len(traces)},
        ))


class OtelTracing(Tracing):
    enabled = True

    def __init__(self, settings: TracingSettings) -> None:
        # Resource.create adds OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME (which wins over ours).
        resource = Resource.create({SERVICE_NAME: settings.service_name})
        # Roots reach the SDK only once `start` has sampled them; a caller's sampled flag decides the rest.
        self._provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_ON))
        self._sample_rate = settings.sample_rate
        insecure = settings.endpoint.startswith("http://")
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(settings.endpoint, insecure=insecure)))
        self._tracer = self._provider.get_tracer("slimserve.serving")

    def start(self, span_name: str, traceparent: str | None, tracestate: str | None, request_id: str,
              model: str) -> RequestTrace:
        parent = otel_context.Context()
        if traceparent:
            carrier = {TRACEPARENT: traceparent} if tracestate is None else {TRACEPARENT: traceparent,
                                                                             TRACESTATE: tracestate}
            parent = _PROPAGATOR.extract(carrier, parent)
        if not trace.get_current_span(parent).get_span_context().is_valid and random.random() >= self._sample_rate:
            return NO_TRACE  # a root left out: nothing made
        span = self._tracer.start_span(
            span_name, context=parent, kind=SpanKind.SERVER,
            attributes={"slimserve.request_id": request_id, "slimserve.model": model},
        )
        if not span.is_recording():
            return NO_TRACE
        return _SpanTrace(self._tracer, span)

    def close(self) -> None:
        self._provider.shutdown()
