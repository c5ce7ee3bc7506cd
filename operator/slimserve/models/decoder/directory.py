"""A decoder directory in Hugging Face's layout (config.json, safetensors, tokenizer files), the built-in
tiny-lm's included, read into a `LoadedDecoder`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from slimserve.api.uri import BUILTIN
from slimserve.models.decoder.config import DecoderConfig
from slimserve.models.decoder.model import DecoderLM
from slimserve.models.decoder.tokenizer import GENERATION_CONFIG, Tokenizer
from slimserve.models.decoder.weights import read_state
from slimserve.models.errors import ModelLoadError

TINY_LM = "tiny-lm"
TINY_LM_URI = f"{BUILTIN}://{TINY_LM}"


def tiny_lm_dir() -> Path:
    """The built-in tiny-lm's files, shipped as package data (`slimserve/data/tiny_lm`)."""
    return Path(str(resources.files("slimserve.data").joinpath("tiny_lm")))


def builtin_text(split: str) -> str:
    """Python source shipped with tiny-lm: "heldout" (files it never trained on, for perplexity) or "train"
    (a sample of its training files, for calibration and distillation)."""
    files = {"heldout": "heldout.txt", "train": "train.txt"}
    if split not in files:
        raise ValueError(f"split: expected one of {sorted(files)}, got {split!r}")
    return (tiny_lm_dir() / files[split]).read_text(encoding="utf-8")


@dataclass
class LoadedDecoder:
    model: DecoderLM
    tokenizer: Tokenizer
    name: str
    source: str  # the URI it came from
    directory: Path  # where its tokenizer and template files are
    eos_token_ids: list[int] = field(default_factory=list)  # generation stops at any of these
    max_length: int = 2048  # prompt and completion together: the model's context
    quantization: dict | None = None  # set when rebuilt from a quantized artifact

    @property
    def chat_template(self) -> str | None:
        return self.tokenizer.chat_template


def loaded_decoder(model: DecoderLM, directory: Path, name: str, source: str, quantization: dict | None = None) -> LoadedDecoder:
    """A model with the tokenizer and generation defaults of `directory` (a Hugging Face one or an artifact)."""
    tokenizer = Tokenizer.from_directory(directory)
    return LoadedDecoder(
        model, tokenizer, name, source, directory,
        eos_token_ids=generation_eos_ids(directory, model.config, tokenizer),
        max_length=model.config.max_position_embeddings,
        quantization=quantization,
    )


def load_hf_directory(directory: Path, uri: str, name: str, dtype: torch.dtype = torch.float32) -> LoadedDecoder:
    """ModelLoadError naming `model.uri` and what is missing or does not fit."""
    try:
        return _read_hf_directory(directory, uri, name, dtype)
    except (ValueError, KeyError, OSError) as exc:
        detail = f"lacks {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
        raise ModelLoadError(f"model.uri: {uri}: {detail}") from None


def _read_hf_directory(directory: Path, uri: str, name: str, dtype: torch.dtype) -> LoadedDecoder:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ValueError("has no config.json (a decoder directory needs config.json, safetensors weights and tokenizer.json)")
    config = DecoderConfig.from_hf(json.loads(config_path.read_text(encoding="utf-8")))
    # A skeleton on the meta device takes the safetensors' memory-mapped tensors as they are (`assign`): no
    # random initialisation, no copy; the pages are read as the weights are used. Only tensors the Hugging
    # Face layout stores otherwise (gpt2's transposed Conv1D weights) or in another float type are copied.
    with torch.device("meta"):
        model = DecoderLM(config)
    state = {key: tensor if tensor.is_contiguous() else tensor.contiguous() for key, tensor in read_state(directory, config).items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"weights do not match config.json: {' '.join(str(exc).split())[:400]}") from None
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight  # one Parameter, as the constructor ties them
    return loaded_decoder(model.to(dtype).eval(), directory, name, uri)


def generation_eos_ids(directory: Path, config: DecoderConfig, tokenizer: Tokenizer) -> list[int]:
    """Every id that ends a generation: generation_config.json's, config.json's and the tokenizer's eos."""
    ids = list(config.eos_token_ids)
    generation = directory / GENERATION_CONFIG
    if generation.is_file():
        eos = json.loads(generation.read_text(encoding="utf-8")).get("eos_token_id")
        ids += [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(int(i) for i in ids))
