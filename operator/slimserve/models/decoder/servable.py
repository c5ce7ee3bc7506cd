"""A decoder behind the Open Inference Protocol's plain infer call: `text_input` BYTES [-1] in, a greedy
completion per text out (`text_output`). Streaming and sampled generation are the server's generate routes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from slimserve.models.decoder.tokenizer import Tokenizer
from slimserve.models.servable import ModelInfo
from slimserve.models.validation import text_rows

INFER_NEW_TOKENS = 32  # completion length of a plain infer call


class CompletionServable:
    def __init__(self, forward: Callable[..., torch.Tensor], info: ModelInfo, tokenizer: Tokenizer, eos_token_ids: list[int], max_length: int):
        self.info = info
        self._forward = forward
        self._tokenizer = tokenizer
        self._eos = set(eos_token_ids)
        self._max_length = max_length

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = text_rows(inputs, self.info.inputs[0].name)
        return {"text_output": np.array([self._complete(text).encode() for text in texts], dtype=object)}

    def _complete(self, text: str) -> str:
        ids = self._tokenizer.encode(text)
        if not 1 <= len(ids) < self._max_length:
            raise ValueError(f"{self.info.inputs[0].name}: a prompt of {len(ids)} tokens does not fit the context of {self._max_length}")
        generated: list[int] = []
        with torch.inference_mode():
            # the whole sequence again each step: short completions, and any forward (quantized, compiled) works
            while len(generated) < INFER_NEW_TOKENS and len(ids) + len(generated) < self._max_length:
                token = int(self._forward(torch.tensor([ids + generated]))[0, -1].argmax())
                if token in self._eos:
                    break
                generated.append(token)
        return self._tokenizer.decode(generated)

    def warmup(self) -> None:
        self.predict({self.info.inputs[0].name: np.array([b"def "], dtype=object)})
