"""A decoder's tokenizer: `tokenizer.json` through the `tokenizers` library (no pickle), its special tokens
and chat template from `tokenizer_config.json` (or `chat_template.jinja`), and streaming detokenization.

Chat templates are Jinja run in jinja2's immutable sandbox: a template comes with the model, so it must not
reach Python objects' internals or change the values it is given.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers.decoders import DecodeStream

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers 5 saves the template beside the config
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG, CHAT_TEMPLATE_FILE, GENERATION_CONFIG)


class ChatTemplateError(ValueError):
    pass


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class IncrementalDecoder:
    """Text of a growing sequence of token ids, one step at a time, never splitting a UTF-8 character:
    `step(id)` returns the new text ("" while a character's bytes are still incomplete)."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, prompt_ids: list[int], skip_special_tokens: bool):
        self._tokenizer = tokenizer
        # The prompt's last tokens are context: whether a token starts with a space can depend on them.
        self._stream = DecodeStream(ids=list(prompt_ids[-8:]), skip_special_tokens=skip_special_tokens)

    def step(self, token_id: int) -> str:
        return self._stream.step(self._tokenizer, int(token_id)) or ""


class Tokenizer:
    def __init__(self, backend: tokenizers.Tokenizer, config: dict[str, Any] | None = None, chat_template: str | None = None):
        self.backend = backend
        config = config or {}
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.chat_template = chat_template
        self._compiled_template = None

    @classmethod
    def from_directory(cls, directory: Path) -> "Tokenizer":
        path = directory / TOKENIZER_FILE
        if not path.is_file():
            raise ValueError(f"has no {TOKENIZER_FILE}")
        backend = tokenizers.Tokenizer.from_file(str(path))
        config_path = directory / TOKENIZER_CONFIG
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        template_path = directory / CHAT_TEMPLATE_FILE
        template = template_path.read_text(encoding="utf-8") if template_path.is_file() else config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        return cls(backend, config, template if isinstance(template, str) else None)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_id(self, text: str | None) -> int | None:
        return None if text is None else self.backend.token_to_id(text)

    @property
    def eos_token_id(self) -> int | None:
        return self.token_id(self.eos_token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def incremental(self, prompt_ids: list[int] = (), skip_special_tokens: bool = True) -> IncrementalDecoder:
        return IncrementalDecoder(self.backend, list(prompt_ids), skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any) -> str:
        """The prompt text for a conversation; ChatTemplateError if the model has no template or it fails."""
        if self.chat_template is None:
            raise ChatTemplateError("the model has no chat template (tokenizer_config.json: chat_template)")
        if self._compiled_template is None:
            self._compiled_template = _compile(self.chat_template)
        try:
            return self._compiled_template.render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "", eos_token=self.eos_token or "", **extra,
            )
        except Exception as exc:  # the template's own raise_exception, or any error it runs into
            raise ChatTemplateError(f"chat template: {exc}") from None


def _compile(source: str):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise ChatTemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    # what transformers offers templates: their own errors, JSON without HTML escaping, the date
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    environment.filters["tojson"] = lambda value, indent=None, **_: json.dumps(value, ensure_ascii=False, indent=indent)
    try:
        return environment.from_string(source)
    except TemplateError as exc:
        raise ChatTemplateError(f"chat template does not compile: {exc}") from None
