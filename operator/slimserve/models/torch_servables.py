"""Servables around a torch model: a digits classifier (FP32 rows in, logits out) and a text embedder."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from slimserve.models.servable import ModelInfo
from slimserve.models.validation import float_rows, text_rows

Forward = Callable[..., torch.Tensor]


class ClassifierServable:
    """`input` FP32 [-1, F] -> `logits` FP32 [-1, C] and `label` INT64 [-1]."""

    def __init__(self, forward: Forward, info: ModelInfo):
        self.info = info
        self._forward = forward
        self._input = info.inputs[0]

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = float_rows(inputs, self._input.name, self._input.shape[1])
        with torch.inference_mode():
            logits = self._forward(torch.from_numpy(rows)).float().numpy()
        return {"logits": logits, "label": logits.argmax(axis=1).astype(np.int64)}

    def warmup(self) -> None:
        self.predict({self._input.name: np.zeros((1, self._input.shape[1]), dtype=np.float32)})


class EmbeddingServable:
    """`text` BYTES [-1] -> `embedding` FP32 [-1, D]; tokenized here, padded to the longest text of the batch."""

    def __init__(self, forward: Forward, info: ModelInfo, tokenizer):
        from slimserve.models.minilm import tokenize

        self.info = info
        self._forward = forward
        self._tokenizer = tokenizer
        self._tokenize = tokenize

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = text_rows(inputs, self.info.inputs[0].name)
        input_ids, attention_mask = self._tokenize(self._tokenizer, texts)
        with torch.inference_mode():
            embedding = self._forward(input_ids, attention_mask).float().numpy()
        return {"embedding": np.ascontiguousarray(embedding)}

    def warmup(self) -> None:
        for rows in (1, 8):
            self.predict({self.info.inputs[0].name: np.array([b"warm up the model"] * rows, dtype=object)})
