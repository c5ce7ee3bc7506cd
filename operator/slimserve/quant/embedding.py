"""`Int8Embedding`: an embedding table stored as int8 rows with one float scale per row.

Only the looked-up rows are dequantized, so the table stays int8 in memory (and in a compiled graph:
the gather depends on the input, so freezing cannot fold it back to float). For MiniLM the word table is
half the model's bytes; per-row scales keep rare tokens' small rows as precise as frequent ones.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimserve.quant.base import QuantizedModule, spec_int
from slimserve.quant.kernels import symmetric_int8_per_row


class Int8Embedding(QuantizedModule):
    kind = "int8-embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.register_buffer("weight_int8", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings, 1, dtype=torch.float32))

    @classmethod
    def from_float(cls, embedding: nn.Embedding) -> "Int8Embedding":
        if embedding.max_norm is not None:
            raise ValueError("embeddings with max_norm renormalise their rows at lookup; they cannot be quantized")
        module = cls(embedding.num_embeddings, embedding.embedding_dim)
        values, scale = symmetric_int8_per_row(embedding.weight)
        module.weight_int8, module.weight_scale = values, scale[:, None]
        return module

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self.weight_int8).float() * F.embedding(indices, self.weight_scale)

    def spec(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim}

    @classmethod
    def empty(cls, spec: dict[str, Any], where: str = "module") -> "Int8Embedding":
        return cls(spec_int(spec, "num_embeddings", where), spec_int(spec, "embedding_dim", where))

    def float_shape_matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Embedding) and (module.num_embeddings, module.embedding_dim) == (
            self.num_embeddings,
            self.embedding_dim,
        )
