"""`load_decoder`: a decoder from any model URI SlimServe takes: `builtin://tiny-lm`, a Hugging Face decoder
directory or a SlimServe decoder artifact (fp32, quantized or pruned) on file://, pvc:// or s3://."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from slimserve.models.decoder.directory import TINY_LM, TINY_LM_URI, LoadedDecoder, load_hf_directory, loaded_decoder, tiny_lm_dir
from slimserve.models.errors import ModelLoadError

if TYPE_CHECKING:
    from slimserve.api.storage import S3Spec


def load_decoder(path_or_uri: str | Path, *, s3: "S3Spec | None" = None, dtype: torch.dtype = torch.float32, expected_digest: str | None = None) -> LoadedDecoder:
    """ModelLoadError naming `model.uri` for anything that is not a loadable decoder; artifacts are verified
    (`expected_digest` pins the manifest digest) and rebuilt with their recipe and quantization."""
    from slimserve.artifacts.storage import resolve_uri

    uri = str(path_or_uri)
    if uri.startswith(TINY_LM_URI.removesuffix(TINY_LM)):
        if uri != TINY_LM_URI:
            raise ModelLoadError(f"model.uri: {uri!r} is not a built-in decoder; the built-in one is {TINY_LM_URI}")
        directory, name = tiny_lm_dir(), TINY_LM
    else:
        directory = resolve_uri(uri, s3) if "://" in uri else Path(uri)
        name = directory.name or "decoder"
    if (directory / "manifest.json").is_file():
        return _load_artifact(directory, uri, expected_digest)
    return load_hf_directory(directory, uri, name, dtype)


def _load_artifact(directory: Path, uri: str, expected_digest: str | None) -> LoadedDecoder:
    from slimserve.artifacts import load_artifact
    from slimserve.models.loading import rebuild_artifact

    loaded = rebuild_artifact(load_artifact(directory, expected_digest=expected_digest))
    if loaded.family.name != "decoder":
        raise ModelLoadError(f"model.uri: {uri} is a {loaded.family.name} artifact, not a decoder")
    return loaded_decoder(loaded.model, directory, loaded.name, uri, loaded.quantization)
