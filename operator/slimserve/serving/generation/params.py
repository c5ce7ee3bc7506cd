"""What one generation request asks for, checked once at the edge (the routes) and trusted after."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no limit
    seed: int | None = None  # None: a fresh random seed
    stop: tuple[str, ...] = ()  # stop sequences, matched on the decoded text and not returned

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(frozen=True)
class Completion:
    """A finished generation: its text, why it ended ("stop" or "length") and the token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
