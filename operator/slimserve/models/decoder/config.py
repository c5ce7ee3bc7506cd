"""The shape of a decoder: one dataclass for the four supported Hugging Face model types.

`DecoderConfig.from_hf` reads a `config.json` (gpt2's own key names included) and refuses what
`DecoderLM` would compute differently from `transformers`, so a loaded model either matches or is not loaded.
The dataclass is also the rebuild recipe a decoder artifact stores: pruning changes its head counts, widths
and depth, and `from_recipe(asdict(config))` builds the same skeleton again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")
# gpt2's names for the fields the other types share
_GPT2_KEYS = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads", "n_positions": "max_position_embeddings"}
_ACTIVATIONS = ("silu", "gelu_new", "gelu_pytorch_tanh", "gelu")


@dataclass
class DecoderConfig:
    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4  # < num_heads: grouped-query attention, each kv head shared by a group of heads
    head_dim: int = 64
    intermediate_size: int = 1024
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0  # unused by gpt2 (learned positions)
    norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    hidden_act: str = "silu"
    qkv_bias: bool = False  # qwen2: biases on q, k, v only
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None  # mistral: a token attends to itself and the window - 1 before it

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type: {self.model_type!r} is not supported; supported: {', '.join(MODEL_TYPES)}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size", "max_position_embeddings"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads: {self.num_heads} is not a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act: {self.hidden_act!r} is not supported; supported: {', '.join(_ACTIVATIONS)}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window: must be >= 1 or null, got {self.sliding_window}")
        self.eos_token_ids = [int(t) for t in self.eos_token_ids]

    @property
    def learned_positions(self) -> bool:
        """gpt2: a position table, LayerNorm and a plain GELU MLP; the others: RoPE, RMSNorm and a gated MLP."""
        return self.model_type == "gpt2"

    @property
    def num_parameters(self) -> int:
        from_layers = self.num_layers * (
            self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
            + self.hidden_size * self.intermediate_size * (2 if self.learned_positions else 3)
        )
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return from_layers + embeddings

    def to_recipe(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any]) -> "DecoderConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(recipe) - known)
        if unknown:
            raise ValueError(f"DecoderConfig: unknown field(s) {unknown}")
        return cls(**recipe)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "DecoderConfig":
        """A Hugging Face `config.json` (as a dict); ValueError naming the key for anything unsupported."""
        model_type = hf.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type: {model_type!r} is not a supported decoder; supported: {', '.join(MODEL_TYPES)}")
        hf = {_GPT2_KEYS.get(key, key): value for key, value in hf.items()}
        hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        eos = hf.get("eos_token_id")
        common = dict(
            model_type=model_type,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            max_position_embeddings=int(hf["max_position_embeddings"]),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=[] if eos is None else [eos] if isinstance(eos, int) else list(eos),
        )
        if model_type == "gpt2":
            return cls(**common, **_gpt2_fields(hf, hidden, heads))
        return cls(**common, **_rope_model_fields(hf, model_type, hidden, heads))


def _gpt2_fields(hf: dict[str, Any], hidden: int, heads: int) -> dict[str, Any]:
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(key):
            raise ValueError(f"{key}: true is not supported")
    if hf.get("scale_attn_weights") is False:
        raise ValueError("scale_attn_weights: false is not supported")
    return dict(
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=int(hf.get("n_inner") or 4 * hidden),
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        hidden_act=hf.get("activation_function", "gelu_new"),
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
    )


def _rope_model_fields(hf: dict[str, Any], model_type: str, hidden: int, heads: int) -> dict[str, Any]:
    # transformers 5 keeps the RoPE settings in rope_parameters, earlier versions in rope_theta / rope_scaling
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"rope_parameters.rope_type: {rope_type!r} is not supported (only the default RoPE)")
    if hf.get("pretraining_tp", 1) != 1:
        raise ValueError(f"pretraining_tp: {hf['pretraining_tp']} is not supported (only 1)")
    sliding_window = None
    if model_type == "mistral":
        sliding_window = hf.get("sliding_window")
    elif model_type == "qwen2" and hf.get("use_sliding_window"):
        raise ValueError("use_sliding_window: true is not supported for qwen2 (per-layer windows)")
    attention_bias = bool(hf.get("attention_bias", False))
    return dict(
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hidden // heads),
        intermediate_size=int(hf["intermediate_size"]),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        hidden_act=hf.get("hidden_act", "silu"),
        qkv_bias=True if model_type == "qwen2" else attention_bias,
        o_bias=False if model_type == "qwen2" else attention_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        sliding_window=None if sliding_window is None else int(sliding_window),
    )
