"""Hugging Face decoder checkpoints (safetensors only) mapped onto `DecoderLM`'s parameter names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from slimserve.models.decoder.config import DecoderConfig

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin")

# gpt2 names that are not weights (causal-mask buffers older checkpoints carry)
_GPT2_BUFFERS = re.compile(r"\.attn\.(bias|masked_bias)$")
_GPT2_RENAMES = {
    "wte": "embed_tokens", "wpe": "embed_positions", "ln_f": "norm", "ln_1": "input_layernorm",
    "ln_2": "post_attention_layernorm", "attn.c_proj": "self_attn.o_proj", "mlp.c_fc": "mlp.up_proj",
    "mlp.c_proj": "mlp.down_proj",
}


class WeightsError(ValueError):
    pass


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint (one, or the shards its index names); pickled ones are refused."""
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as exc:
            raise WeightsError(f"{index.name}: not a safetensors index ({exc})") from None
        for shard in shards:  # a name, never a path: the shards lie beside their index
            if (directory / shard).parent != directory or not (directory / shard).is_file():
                raise WeightsError(f"{index.name}: names {shard!r}, which is not a file beside it")
        return [directory / shard for shard in shards]
    if (directory / SAFETENSORS_FILE).is_file():
        return [directory / SAFETENSORS_FILE]
    pickled = [name for name in PICKLED_WEIGHTS if (directory / name).exists()]
    if pickled:
        raise WeightsError(f"has only pickled weights ({', '.join(pickled)}); SlimServe loads safetensors only (save with safe_serialization=True)")
    raise WeightsError(f"has no {SAFETENSORS_FILE}")


def read_state(directory: Path, config: DecoderConfig) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under `DecoderLM`'s names."""
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    state = _from_gpt2(tensors, config) if config.model_type == "gpt2" else _from_llama(tensors)
    if config.tie_word_embeddings:
        state.setdefault("lm_head.weight", state.get("embed_tokens.weight"))
    return state


def _from_llama(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key.removeprefix("model."): value for key, value in tensors.items() if not key.endswith("rotary_emb.inv_freq")}


def _from_gpt2(tensors: dict[str, torch.Tensor], config: DecoderConfig) -> dict[str, torch.Tensor]:
    """gpt2 keeps Conv1D weights as [in, out] and q, k, v fused in c_attn: transposed and split here."""
    state: dict[str, torch.Tensor] = {}
    hidden = config.hidden_size
    for key, value in tensors.items():
        name = key.removeprefix("transformer.")
        if _GPT2_BUFFERS.search(name):
            continue
        name = re.sub(r"^h\.(\d+)\.", r"layers.\1.", name)
        if ".attn.c_attn." in name:
            prefix, kind = name.split(".attn.c_attn.")
            parts = (value.t() if kind == "weight" else value).split(hidden, dim=0)
            for projection, part in zip(("q_proj", "k_proj", "v_proj"), parts):
                state[f"{prefix}.self_attn.{projection}.{kind}"] = part.contiguous()
            continue
        for old, new in _GPT2_RENAMES.items():
            name = re.sub(rf"(^|\.){re.escape(old)}\.", rf"\g<1>{new}.", name)
        transposed = name.endswith(("o_proj.weight", "up_proj.weight", "down_proj.weight"))
        state[name] = value.t().contiguous() if transposed else value
    return state
