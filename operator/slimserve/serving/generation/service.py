"""The decoder a server generates with: prompts to token ids within the limits, into the engine, and the
token counts the responses report. The OpenAI and OIP routes share it."""

from __future__ import annotations

from dataclasses import dataclass, replace

from slimserve.serving.errors import ModelNotReady
from slimserve.serving.generation.decoder import start_engine
from slimserve.serving.generation.engine import GenerationEngine, Stream
from slimserve.serving.generation.options import GenerationOptions
from slimserve.serving.generation.params import SamplingParams
from slimserve.serving.generation.api_common import FieldError
from slimserve.serving.metrics import GenerationMetrics
from slimserve.serving.model import ServedModel
from slimserve.serving.tracing import NO_TRACE, RequestTrace


@dataclass
class RequestFields:
    """Where a value came from in the request, for the error that names it (`prompt`, `messages`...)."""

    prompt: str
    max_tokens: str


class Generation:
    """The routes' handle on the decoder of `model`: refuses work (503) until it is loaded and ready."""

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self._engine: GenerationEngine | None = None
        self.tokenizer = None  # models.decoder.Tokenizer: encoding, the chat template
        self.max_tokens = 0  # most tokens a request may generate (0: the rest of the context)

    def load(self, options: GenerationOptions, metrics: GenerationMetrics) -> None:
        """On the model thread, once `model` is loaded: start its engine; the caller then marks it ready."""
        servable = self.model.servable
        self.tokenizer = servable.decoder.tokenizer
        self.max_tokens = options.max_tokens
        self._engine = start_engine(servable, options, metrics)

    def stop(self) -> None:
        if self._engine is not None:
            self._engine.stop()

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return self.model.info.version

    @property
    def engine(self) -> GenerationEngine:
        if self._engine is None or not self.model.ready:
            raise ModelNotReady(f"model {self.name!r} is not ready yet (loading)")
        return self._engine

    @property
    def max_len(self) -> int:
        """Tokens a sequence may hold, prompt and output together."""
        return self.engine.plan.max_len

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        self.engine  # not ready: 503 before anything else
        if self.tokenizer.chat_template is None:
            raise FieldError("messages", f"model {self.name!r} has no chat template; use /v1/completions with a prompt")
        try:
            return self.tokenizer.apply_chat_template(messages)
        except ValueError as error:  # the template refused the conversation (its raise_exception)
            raise FieldError("messages", str(error)) from None

    def start(self, prompt: str, params: SamplingParams, max_tokens: int | None, fields: RequestFields,
              default_max_tokens: int | None = None, trace: RequestTrace = NO_TRACE) -> Stream:
        """Queue `prompt` to be sampled as `params` say; `max_tokens` None takes `default_max_tokens`, else the
        rest of the context, within the server's limit either way. Raises InvalidInput naming the field when
        prompt and output cannot fit a sequence, or `max_tokens` is above the limit."""
        engine = self.engine
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise FieldError(fields.prompt, "the prompt is empty")
        room = self.max_len - len(ids)
        if room < 1:
            raise FieldError(fields.prompt, f"the prompt is {len(ids)} tokens; this model's context holds "
                                            f"{self.max_len} tokens, prompt and output together")
        limit = min(room, self.max_tokens) if self.max_tokens else room
        if max_tokens is None:
            max_tokens = limit if default_max_tokens is None else min(default_max_tokens, limit)
        elif self.max_tokens and max_tokens > self.max_tokens:
            raise FieldError(fields.max_tokens, f"{max_tokens} tokens are above this server's limit of "
                                                f"{self.max_tokens} tokens per request")
        elif max_tokens > room:
            raise FieldError(fields.max_tokens, f"{max_tokens} tokens do not fit: the prompt is {len(ids)} tokens "
                                                f"and the context {self.max_len}, so at most {room} can be generated")
        return engine.submit(ids, replace(params, max_tokens=max_tokens), trace)
