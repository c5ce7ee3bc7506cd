"""OpenAI-compatible routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models.

Requests are checked by pydantic models that refuse unknown fields and wrong types (no coercion), so a
client's typo is a 400 naming the field, never a silently ignored setting. Errors use OpenAI's format:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Literal

from pydantic import Field

from slimserve.serving.dataplane import DataPlane, RequestTimer
from slimserve.serving.errors import ModelNotFound, ServingError, client_message, http_status
from slimserve.serving.generation import sse
from slimserve.serving.generation.engine import Chunk
from slimserve.serving.generation.params import Completion, SamplingParams
from slimserve.serving.generation.api_common import (
    Strict, field_names, parse_request, retry_after, stop_sequences, while_connected,
)
from slimserve.serving.generation.observed import CHAT_SPAN, COMPLETIONS_SPAN, Observed
from slimserve.serving.generation.service import RequestFields
from slimserve.serving.generation.service import Generation
from slimserve.serving.metrics import ServerMetrics
from slimserve.serving.rest import HttpRequest, HttpResponse, RestApp, StreamingResponse
from slimserve.serving.rest_codec import dumps

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the context's rest
MAX_STOP_SEQUENCES = 4


class StreamOptions(Strict):
    include_usage: bool = False


class _Sampling(Strict):
    model: str
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=-1)] = -1  # vLLM's extension: -1 (or 0) for no limit
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    # OpenAI parameters taken at their neutral values only (clients often send them), refused otherwise
    n: Literal[1] = 1
    presence_penalty: Annotated[float, Field(ge=0, le=0)] = 0
    frequency_penalty: Annotated[float, Field(ge=0, le=0)] = 0
    logit_bias: Annotated[dict[str, float], Field(max_length=0)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_tokens=1, temperature=self.temperature, top_p=self.top_p, top_k=max(self.top_k, 0),
            seed=self.seed, stop=stop_sequences(self.stop, "stop"),
        )


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str | Annotated[list[TextPart], Field(min_length=1)]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None


def add_openai_routes(app: RestApp, dataplane: DataPlane, generation: Generation) -> None:
    metrics = dataplane.metrics
    created = int(time.time())

    async def models(request: HttpRequest) -> HttpResponse:
        model = {"id": generation.name, "object": "model", "created": created, "owned_by": "slimserve"}
        return HttpResponse(200, dumps({"object": "list", "data": [model]}))

    async def completions(request: HttpRequest) -> HttpResponse | StreamingResponse:
        return await _answer(request, CompletionRequest, _complete, COMPLETIONS_SPAN)

    async def chat(request: HttpRequest) -> HttpResponse | StreamingResponse:
        return await _answer(request, ChatRequest, _chat, CHAT_SPAN)

    async def _answer(request: HttpRequest, schema: type[_Sampling], run, span: str) -> HttpResponse | StreamingResponse:
        try:
            raw = await request.body()
        except ServingError as error:
            return error_response(error)
        observed = Observed(dataplane, request, span, generation.name, raw)

        async def work() -> HttpResponse | StreamingResponse:
            body = parse_request(schema, raw, _FIELD_NAMES)
            if body.model != generation.name:
                raise ModelNotFound(f"model: {body.model!r} is not served here; this server serves {generation.name!r}")
            return await run(body, request, observed)

        return await observed.answer(work(), error_response)

    async def _complete(body: CompletionRequest, request: HttpRequest, observed: Observed) -> HttpResponse | StreamingResponse:
        observed.stream = generation.start(body.prompt_text, body.sampling(), body.max_tokens,
                                           RequestFields("prompt", "max_tokens"), COMPLETIONS_DEFAULT_MAX_TOKENS,
                                           observed.trace)
        return await _reply(_Reply(False, generation.name, metrics), observed, body, request)

    async def _chat(body: ChatRequest, request: HttpRequest, observed: Observed) -> HttpResponse | StreamingResponse:
        prompt = generation.chat_prompt([{"role": m.role, "content": m.text()} for m in body.messages])
        field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        observed.stream = generation.start(prompt, body.sampling(), body.max_completion_tokens or body.max_tokens,
                                           RequestFields("messages", field), trace=observed.trace)
        return await _reply(_Reply(True, generation.name, metrics), observed, body, request)

    async def _reply(reply: _Reply, observed: Observed, body: _Sampling, request: HttpRequest) -> HttpResponse | StreamingResponse:
        stream = observed.stream
        if not body.stream:
            with RequestTimer(metrics, "rest"):
                return reply.whole(await while_connected(request.receive, stream.complete()))
        # The first chunk before the 200: a request that waited too long for a slot is still a 503.
        batches = stream.batches()
        first = await while_connected(request.receive, anext(batches))
        events = reply.stream(first, batches, stream.prompt_tokens, _usage_wanted(body))
        return StreamingResponse(200, events, sse.CONTENT_TYPE)

    app.add_route("POST", "/v1/completions", completions, name="completions")
    app.add_route("POST", "/v1/chat/completions", chat, name="chat_completions")
    app.add_route("GET", "/v1/models", models, name="models")


class _Reply:
    """The documents of one answer, whole or as a stream of chunks; `chat` picks the chat shapes."""

    def __init__(self, chat: bool, model: str, metrics: ServerMetrics) -> None:
        self.chat = chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.model = model
        self.metrics = metrics
        self.created = int(time.time())

    def document(self, choices: list[dict], usage: dict | None = None, chunk: bool = False) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        document = {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            document["usage"] = usage
        return document

    def whole(self, done: Completion) -> HttpResponse:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": done.text}}
        else:
            choice = {"index": 0, "text": done.text}
        choice |= {"finish_reason": done.finish_reason, "logprobs": None}
        return HttpResponse(200, dumps(self.document([choice], _usage(done.prompt_tokens, done.completion_tokens))))

    def _chunk_document(self, text: str, finish_reason: str | None) -> dict:
        if self.chat:
            content = {"delta": {"content": text} if text or finish_reason is None else {}}
        else:
            content = {"text": text, "logprobs": None}
        return self.document([{"index": 0, **content, "finish_reason": finish_reason}], chunk=True)

    async def stream(self, first: list[Chunk], rest: AsyncIterator[list[Chunk]], prompt_tokens: int,
                     with_usage: bool) -> AsyncGenerator[bytes, None]:
        """SSE events: a chunk per piece of text, one with the finish reason, the usage if asked, [DONE]. The
        events of the chunks that came together go out in one write."""
        text_event = sse.text_events(lambda text: self._chunk_document(text, None))
        with RequestTimer(self.metrics, "rest"):
            events = []
            if self.chat:
                opening = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                events.append(sse.event(self.document([opening], chunk=True)))
            chunks = first
            try:
                while True:
                    events.extend(text_event(chunk.text) for chunk in chunks if chunk.text)
                    last = chunks[-1]
                    if last.finish_reason is not None:
                        events.append(sse.event(self._chunk_document("", last.finish_reason)))
                        if with_usage:
                            usage = _usage(prompt_tokens, last.completion_tokens)
                            events.append(sse.event(self.document([], usage, chunk=True)))
                        yield b"".join(events)
                        break
                    if events:
                        yield b"".join(events)
                        events = []
                    chunks = await anext(rest)
            except ServingError as error:  # after the 200 went out: the error is the stream's last event
                yield b"".join([*events, sse.event(_error_document(error))])
            finally:
                await rest.aclose()
        yield sse.DONE


_FIELD_NAMES = field_names(CompletionRequest, ChatRequest, Message, TextPart, StreamOptions)


def _usage_wanted(body: _Sampling) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _error_document(error: BaseException) -> dict:
    status = http_status(error)
    kind = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error"}.get(status, "server_error")
    code = {404: "model_not_found", 429: "rate_limit_exceeded", 503: "overloaded"}.get(status)
    param = getattr(error, "param", None)
    return {"error": {"message": client_message(error), "type": kind, "param": param, "code": code}}


def error_response(error: ServingError) -> HttpResponse:
    return HttpResponse(http_status(error), dumps(_error_document(error)), headers=retry_after(error))
