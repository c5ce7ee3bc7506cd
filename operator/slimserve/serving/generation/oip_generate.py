"""The Open Inference Protocol's generate extension (Triton's): POST /v2/models/NAME[/versions/V]/generate
and /generate_stream.

Request: `{"text_input": "...", "parameters": {"max_tokens": 32, "temperature": 0, "top_p", "top_k", "seed",
"stop"}}`; response: `{"model_name", "model_version", "text_output", "finish_reason", "prompt_tokens",
"completion_tokens"}`, or a stream of server-sent events, one per piece of text, the last with its
`finish_reason`. Errors are the OIP's `{"error": "..."}`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated

from pydantic import Field

from slimserve.serving.dataplane import DataPlane, RequestTimer
from slimserve.serving.errors import ServingError, client_message, http_status
from slimserve.serving.generation import sse
from slimserve.serving.generation.engine import Chunk
from slimserve.serving.generation.params import SamplingParams
from slimserve.serving.generation.api_common import (
    Strict, field_names, parse_request, retry_after, stop_sequences, while_connected,
)
from slimserve.serving.generation.observed import GENERATE_SPAN, GENERATE_STREAM_SPAN, Observed
from slimserve.serving.generation.service import RequestFields
from slimserve.serving.generation.service import Generation
from slimserve.serving.rest import HttpRequest, HttpResponse, RestApp, StreamingResponse
from slimserve.serving.rest_codec import dumps


class GenerateParameters(Strict):
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=0)] = 0
    seed: int | None = None
    stop: str | list[str] | None = None


class GenerateRequest(Strict):
    text_input: str
    id: str | None = None
    parameters: GenerateParameters = GenerateParameters()

    def sampling(self) -> SamplingParams:
        p = self.parameters
        return SamplingParams(max_tokens=1, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, seed=p.seed,
                              stop=stop_sequences(p.stop, "parameters.stop"))


def add_generate_routes(app: RestApp, dataplane: DataPlane, generation: Generation) -> None:
    metrics = dataplane.metrics
    fields = RequestFields("text_input", "parameters.max_tokens")

    async def observe(request: HttpRequest, span: str, answer) -> HttpResponse | StreamingResponse:
        """The request's answer, traced and payload-logged as an infer request is (from its body on)."""
        try:
            dataplane.check_generation_target(request.params["name"], request.params.get("version", ""))
            observed = Observed(dataplane, request, span, generation.name, await request.body())
        except ServingError as error:
            return _error_response(error)
        return await observed.answer(answer(request, observed), _error_response)

    def start(observed: Observed) -> GenerateRequest:
        body = parse_request(GenerateRequest, observed.body, _FIELD_NAMES)
        observed.stream = generation.start(body.text_input, body.sampling(), body.parameters.max_tokens, fields,
                                           trace=observed.trace)
        return body

    async def whole(request: HttpRequest, observed: Observed) -> HttpResponse:
        body = start(observed)
        with RequestTimer(metrics, "rest"):
            done = await while_connected(request.receive, observed.stream.complete())
        return HttpResponse(200, dumps({
            **_header(body.id), "text_output": done.text, "finish_reason": done.finish_reason,
            "prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
        }))

    async def streamed(request: HttpRequest, observed: Observed) -> StreamingResponse:
        body = start(observed)
        batches = observed.stream.batches()
        # before the 200: a request that waited too long is still a 503
        first = await while_connected(request.receive, anext(batches))
        return StreamingResponse(200, _events(_header(body.id), first, batches), sse.CONTENT_TYPE)

    async def generate(request: HttpRequest) -> HttpResponse | StreamingResponse:
        return await observe(request, GENERATE_SPAN, whole)

    async def generate_stream(request: HttpRequest) -> HttpResponse | StreamingResponse:
        return await observe(request, GENERATE_STREAM_SPAN, streamed)

    async def _events(header: dict, first: list[Chunk], rest: AsyncIterator[list[Chunk]]) -> AsyncGenerator[bytes, None]:
        """An event per piece of text, the last with its finish reason; those of chunks that came together in one write."""
        text_event = sse.text_events(lambda text: {**header, "text_output": text})
        with RequestTimer(metrics, "rest"):
            chunks = first
            try:
                while True:
                    last = chunks[-1]
                    events = [text_event(chunk.text) for chunk in chunks if chunk.text and chunk is not last]
                    if last.finish_reason is not None:
                        events.append(sse.event({**header, "text_output": last.text, "finish_reason": last.finish_reason,
                                                 "completion_tokens": last.completion_tokens}))
                    elif last.text:
                        events.append(text_event(last.text))
                    if events:
                        yield b"".join(events)
                    if last.finish_reason is not None:
                        return
                    chunks = await anext(rest)
            except ServingError as error:
                yield sse.event({"error": client_message(error)})
            finally:
                await rest.aclose()

    def _header(request_id: str | None) -> dict:
        header = {"model_name": generation.name, "model_version": generation.version}
        return header if request_id is None else {"id": request_id, **header}

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_route("POST", f"{prefix}/generate", generate, name="generate")
        app.add_route("POST", f"{prefix}/generate_stream", generate_stream, name="generate_stream")


_FIELD_NAMES = field_names(GenerateRequest, GenerateParameters)


def _error_response(error: ServingError) -> HttpResponse:
    return HttpResponse(http_status(error), dumps({"error": client_message(error)}), headers=retry_after(error))
