"""`load_decoder`: a Hugging Face decoder directory (or the built-in tiny-lm) from any storage URI, rebuilt
as a `DecoderLM` with its tokenizer, chat template and generation defaults."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from slimserve.api.uri import BUILTIN
from slimserve.models.decoder.config import DecoderConfig
from slimserve.models.decoder.model import DecoderLM
from slimserve.models.decoder.tokenizer import GENERATION_CONFIG, Tokenizer
from slimserve.models.decoder.weights import WeightsError, read_state
from slimserve.models.errors import ModelLoadError

if TYPE_CHECKING:
    from slimserve.api.storage import S3Spec

BUILTIN_SCHEME = f"{BUILTIN}://"
TINY_LM = "tiny-lm"
TINY_LM_URI = BUILTIN_SCHEME + TINY_LM


def tiny_lm_dir() -> Path:
    """The built-in tiny-lm's files, shipped as package data (`slimserve/data/tiny_lm`)."""
    return Path(str(resources.files("slimserve.data").joinpath("tiny_lm")))


@dataclass
class LoadedDecoder:
    model: DecoderLM
    tokenizer: Tokenizer
    name: str
    source: str  # the URI it came from
    directory: Path  # where its config, tokenizer and template files are
    eos_token_ids: list[int] = field(default_factory=list)  # generation stops at any of these
    max_length: int = 2048  # prompt and completion together: the model's context

    @property
    def chat_template(self) -> str | None:
        return self.tokenizer.chat_template


def load_decoder(path_or_uri: str | Path, *, s3: "S3Spec | None" = None, dtype: torch.dtype = torch.float32) -> LoadedDecoder:
    """A decoder from `builtin://tiny-lm`, file://, pvc://, s3:// or a local path; ModelLoadError naming `model.uri`."""
    from slimserve.artifacts.storage import resolve_uri

    uri = str(path_or_uri)
    if uri.startswith(BUILTIN_SCHEME):
        if uri != TINY_LM_URI:
            raise ModelLoadError(f"model.uri: {uri!r} is not a built-in decoder; the built-in one is {TINY_LM_URI}")
        directory, name = tiny_lm_dir(), TINY_LM
    else:
        directory = resolve_uri(uri, s3) if "://" in uri else Path(uri)
        name = directory.name or "decoder"
    try:
        return load_hf_directory(directory, uri, name, dtype)
    except (WeightsError, ValueError, KeyError, OSError) as exc:
        detail = f"lacks {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
        raise ModelLoadError(f"model.uri: {uri}: {detail}") from None


def load_hf_directory(directory: Path, uri: str, name: str, dtype: torch.dtype = torch.float32) -> LoadedDecoder:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ValueError("has no config.json (a decoder directory needs config.json, safetensors weights and tokenizer.json)")
    hf = json.loads(config_path.read_text(encoding="utf-8"))
    config = DecoderConfig.from_hf(hf)
    tokenizer = Tokenizer.from_directory(directory)
    model = DecoderLM(config)
    try:
        model.load_state_dict(read_state(directory, config), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"weights do not match config.json: {' '.join(str(exc).split())[:400]}") from None
    model = model.to(dtype).eval()
    return LoadedDecoder(
        model, tokenizer, name, uri, directory,
        eos_token_ids=generation_eos_ids(directory, config, tokenizer),
        max_length=config.max_position_embeddings,
    )


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
