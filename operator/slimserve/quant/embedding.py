"""Quantized embedding tables: `Int8Embedding` (int8 rows, one float scale per row) and `Int4Embedding`
(int4-weight-only's nibble layout, a scale and zero point per group of a row).

Only the looked-up rows are dequantized, so the table stays quantized in memory (and in a compiled graph:
the gather depends on the input, so freezing cannot fold it back to float). For MiniLM the word table is
half the model's bytes; per-row (per-group) scales keep rare tokens' small rows as precise as frequent ones.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimserve.quant.base import QuantizedModule, spec_int
from slimserve.quant.int4_kernels import KERNEL_GROUP_SIZES
from slimserve.quant.int4_weight_only import dequantize_int4_grouped, quantize_int4_grouped, register_neutral_layout
from slimserve.quant.kernels import ROW_BLOCK, symmetric_int8_per_row


class _Table(QuantizedModule):
    """Shape bookkeeping shared by the quantized tables."""

    num_embeddings: int
    embedding_dim: int

    def spec(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim}

    def float_shape_matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Embedding) and (module.num_embeddings, module.embedding_dim) == (
            self.num_embeddings,
            self.embedding_dim,
        )


def _check_quantizable(embedding: nn.Embedding) -> None:
    if embedding.max_norm is not None:
        raise ValueError("embeddings with max_norm renormalise their rows at lookup; they cannot be quantized")


class Int8Embedding(_Table):
    kind = "int8-embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.register_buffer("weight_int8", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings, 1, dtype=torch.float32))

    @classmethod
    def from_float(cls, embedding: nn.Embedding) -> "Int8Embedding":
        _check_quantizable(embedding)
        module = cls(embedding.num_embeddings, embedding.embedding_dim)
        values, scale = symmetric_int8_per_row(embedding.weight)
        module.weight_int8, module.weight_scale = values, scale[:, None]
        return module

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self.weight_int8).float() * F.embedding(indices, self.weight_scale)

    @classmethod
    def empty(cls, spec: dict[str, Any], where: str = "module") -> "Int8Embedding":
        return cls(spec_int(spec, "num_embeddings", where), spec_int(spec, "embedding_dim", where))


def table_group_size(embedding_dim: int, largest: int = max(KERNEL_GROUP_SIZES)) -> int | None:
    """The largest int4 group size up to `largest` dividing a row (None: the table cannot be int4)."""
    return next((size for size in KERNEL_GROUP_SIZES if size <= largest and embedding_dim % size == 0), None)


class Int4Embedding(_Table):
    """An embedding table in int4-weight-only's device-neutral layout (`int4_weight_only`): each row's
    `embedding_dim` values in groups of `group_size`, two nibbles per byte, a bf16 scale and a uint8 zero
    point per group. A lookup gathers the rows' bytes, scales and zeros and dequantizes only those rows."""

    kind = "int4-embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, group_size: int):
        super().__init__()
        if group_size % 2 or embedding_dim % group_size:
            raise ValueError(f"group_size {group_size} must be even and divide embedding_dim {embedding_dim}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.group_size = group_size
        register_neutral_layout(self, num_embeddings, embedding_dim, group_size)

    @classmethod
    def from_float(cls, embedding: nn.Embedding, group_size: int) -> "Int4Embedding":
        _check_quantizable(embedding)
        module = cls(embedding.num_embeddings, embedding.embedding_dim, group_size)
        weight = embedding.weight.detach()
        # Blocks of rows: the float temporaries stay small however large the vocabulary.
        for start in range(0, weight.shape[0], ROW_BLOCK):
            rows = slice(start, start + ROW_BLOCK)
            module.weight_uint4x2[rows], module.weight_scale[rows], module.weight_zero[rows] = quantize_int4_grouped(
                weight[rows].cpu(), group_size
            )
        return module.to(weight.device)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        flat = indices.reshape(-1)
        rows = dequantize_int4_grouped(
            F.embedding(flat, self.weight_uint4x2), F.embedding(flat, self.weight_scale), F.embedding(flat, self.weight_zero),
            torch.float32,
        )
        return rows.reshape(*indices.shape, self.embedding_dim)

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_int4_grouped(self.weight_uint4x2, self.weight_scale, self.weight_zero, torch.float32)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "group_size": self.group_size}

    @classmethod
    def empty(cls, spec: dict[str, Any], where: str = "module") -> "Int4Embedding":
        return cls(spec_int(spec, "num_embeddings", where), spec_int(spec, "embedding_dim", where), spec_int(spec, "group_size", where))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, group_size={self.group_size}"


QUANTIZED_TABLES = (Int8Embedding, Int4Embedding)
