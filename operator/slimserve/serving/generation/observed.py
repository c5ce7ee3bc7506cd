"""Generation requests traced and payload-logged through the same calls as OIP infer: `Tracing.start` decides
whether a request is traced (a caller's traceparent, else the sample rate), `PayloadLogger.record` whether and
what of it is logged (the sample by request id, the mode).

A request's server span lasts until its answer is complete: a whole one when it is sent, a stream when its last
event is (or its client leaves). Its child `queue_wait` times the wait for a KV cache slot; its attributes carry
the token counts and why generation ended (OpenTelemetry's gen_ai.* names).

The payload log gets the request body as received and, once, the answer: a whole answer as sent; a stream,
when it ends, as one JSON document (`STREAM_CONTENT_TYPE`) of its text, finish reason and token counts, never an
event per token. A client that left is logged as such: `finish_reason` "disconnected" with what it had been
sent. A request refused before it generated is logged without a response, as a failed infer is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from slimserve.serving.dataplane import DataPlane
from slimserve.serving.errors import ServingError, client_message
from slimserve.serving.generation.engine import Stream
from slimserve.serving.rest import HttpRequest, HttpResponse, StreamingResponse
from slimserve.serving.rest_codec import JSON_CONTENT_TYPE, dumps
from slimserve.serving.tracing import RequestTrace

COMPLETIONS_SPAN = "POST /v1/completions"
CHAT_SPAN = "POST /v1/chat/completions"
GENERATE_SPAN = "POST /v2/models/{name}/generate"
GENERATE_STREAM_SPAN = "POST /v2/models/{name}/generate_stream"
STREAM_CONTENT_TYPE = "application/json"  # a stream's outcome, one document
DISCONNECTED = "disconnected"  # the finish reason logged for a client that left before the end


class Observed:
    """One generation request's trace and payload log entry; `stream` is set once the engine has its sequence."""

    def __init__(self, dataplane: DataPlane, request: HttpRequest, span: str, model: str, body: bytes) -> None:
        self._payload_log = dataplane.payload_log
        self._request = request
        self._model = model
        self.body = body
        self.trace: RequestTrace = dataplane.tracing.start(
            span, request.header(b"traceparent"), request.header(b"tracestate"), request.request_id, model
        )
        self.stream: Stream | None = None
        self._ended = False

    async def answer(self, work: Awaitable[HttpResponse | StreamingResponse],
                     refusal: Callable[[ServingError], HttpResponse]) -> HttpResponse | StreamingResponse:
        """`work`'s answer (or its ServingError's `refusal`), observed: a whole one now, a stream once it ends."""
        try:
            response = await work
        except ServingError as error:
            return self.answered(refusal(error))
        except ConnectionAbortedError:
            self.left()
            raise
        if isinstance(response, StreamingResponse):
            response.chunks = _Observed(response.chunks, self)
            return response
        return self.answered(response)

    def answered(self, response: HttpResponse) -> HttpResponse:
        """A whole answer, or a refusal: both are logged as sent (a refusal without its response)."""
        ok = response.status == 200
        self._end(response.body if ok else None, JSON_CONTENT_TYPE,
                  None if ok else RuntimeError(f"HTTP {response.status}: {response.body[:200].decode(errors='replace')}"))
        return response

    def left(self) -> None:
        """The client went away before a whole answer was sent."""
        self._end(self._outcome(), STREAM_CONTENT_TYPE, None)

    def stream_ended(self, error: BaseException | None) -> None:
        self._end(self._outcome(), STREAM_CONTENT_TYPE, error)

    def _outcome(self) -> bytes:
        """The answer as far as the client got it: its text, why it ended and the token counts."""
        stream = self.stream
        if stream is None:
            return dumps({"finish_reason": DISCONNECTED})
        document = {"text": "".join(stream.sent), "finish_reason": stream.finish_reason or DISCONNECTED,
                    "prompt_tokens": stream.prompt_tokens, "completion_tokens": stream.completion_tokens}
        if stream.error is not None:
            document |= {"finish_reason": "error", "error": client_message(stream.error)}
        return dumps(document)

    def _end(self, response: bytes | None, response_type: str, error: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        stream = self.stream
        if stream is not None:
            reason = "error" if stream.error is not None else stream.finish_reason or DISCONNECTED
            self.trace.annotate({"gen_ai.usage.input_tokens": stream.prompt_tokens,
                                 "gen_ai.usage.output_tokens": stream.completion_tokens,
                                 "gen_ai.response.finish_reasons": (reason,)})
        self.trace.end(error if error is not None else stream.error if stream is not None else None)
        if self._payload_log is not None:
            self._payload_log.record(self._request.request_id, self._model, self.body,
                                     self._request.header(b"content-type") or JSON_CONTENT_TYPE, response, response_type)


class _Observed:
    """Server-sent events passed through as they are; the request is observed once they end or are closed (the
    client left), even when they were never started."""

    def __init__(self, events: AsyncIterator[bytes], observed: Observed) -> None:
        self._events = events
        self._observed = observed

    def __aiter__(self) -> "_Observed":
        return self

    async def __anext__(self) -> bytes:
        try:
            return await anext(self._events)
        except (StopAsyncIteration, GeneratorExit, asyncio.CancelledError):  # the end, or the client left
            self._observed.stream_ended(None)
            raise
        except Exception as error:
            self._observed.stream_ended(error)
            raise

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            self._observed.stream_ended(None)
