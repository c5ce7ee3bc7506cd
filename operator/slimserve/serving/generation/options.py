"""How a server of a decoder bounds its generation work (`slimserve serve` flags, SLIMSERVE_* variables)."""

from __future__ import annotations

from dataclasses import dataclass

from slimserve.api.workload import DEFAULTS


@dataclass(frozen=True)
class GenerationOptions:
    kv_cache_bytes: int = DEFAULTS.kv_cache_bytes  # 0: max_sequences sequences of the model's whole context
    max_sequences: int = DEFAULTS.max_sequences  # KV cache slots: sequences in the decode batch at most
    max_waiting: int = DEFAULTS.max_waiting  # requests queued for a slot; one more is refused (429)
    queue_timeout_s: float = DEFAULTS.queue_timeout_s  # a queued request's longest wait (then 503)
    context_length: int = DEFAULTS.context_length  # a sequence's tokens, prompt and output (0: the model's context)
    max_tokens: int = DEFAULTS.max_tokens  # most tokens one request may generate (0: the rest of the context)

    def __post_init__(self) -> None:
        checks = {
            "kv_cache_bytes": self.kv_cache_bytes >= 0,
            "max_sequences": self.max_sequences >= 1,
            "max_waiting": self.max_waiting >= 0,
            "queue_timeout_s": self.queue_timeout_s > 0,
            "context_length": self.context_length == 0 or self.context_length >= 2,
            "max_tokens": self.max_tokens >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}: invalid value {getattr(self, name)!r}")
        if self.max_tokens and self.context_length and self.max_tokens >= self.context_length:
            raise ValueError(f"max_tokens: {self.max_tokens} leaves no room for a prompt in a context of "
                             f"{self.context_length} tokens")

    @property
    def configured(self) -> bool:
        """Whether any bound was set apart from the defaults: a server of a model that is no decoder refuses them."""
        return self != GenerationOptions()

    def context(self, model_context: int) -> int:
        """Tokens a sequence may hold on a model of `model_context`; ValueError when asked for more than it has."""
        if self.context_length > model_context:
            raise ValueError(f"context_length: {self.context_length} tokens asked for, but the model's context is "
                             f"{model_context} tokens")
        return self.context_length or model_context
