"""hf:// model sources: a Hugging Face Hub repository (or a mirror at `HF_ENDPOINT`) through huggingface_hub.

Only safetensors weights and the text files beside them (config, tokenizer, templates) are fetched: a
repository whose weights are pickles (`*.bin`, `*.pt`, `*.pth`, `*.ckpt`) is refused, never loaded. The token
is `HF_TOKEN`, which the operator fills from the Secret the spec names.
"""

from __future__ import annotations

import os
from pathlib import Path

from slimserve.api.uri import StorageUri
from slimserve.api.workload import HUB_ENDPOINT
from slimserve.artifacts.errors import StorageError

ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.txt", "*.model", "*.jinja"]
TIMEOUT_S = 60.0


def hf_endpoint() -> str | None:
    """The Hub or the mirror hf:// URIs are read from; huggingface_hub's default when `HF_ENDPOINT` is unset."""
    return HUB_ENDPOINT.read()


def fetch_hf(source: StorageUri, directory: Path) -> Path:
    """The repository's safetensors snapshot, downloaded into the empty `directory`."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    repo_id, revision = source.hf_repo or ("", None)
    uri, endpoint, token = source.uri, hf_endpoint(), os.environ.get("HF_TOKEN") or False
    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision, timeout=TIMEOUT_S)
        files = [sibling.rfilename for sibling in info.siblings or []]
        if not any(name.endswith(".safetensors") for name in files):
            raise StorageError(
                f"{uri!r}: the repository has no .safetensors weights ({', '.join(files[:8]) or 'no files'}); "
                "pickled weights (.bin, .pt) are never loaded",
                reason="UnsafeModel",
            )
        snapshot_download(
            repo_id, revision=info.sha, endpoint=endpoint, token=token, local_dir=directory,
            allow_patterns=ALLOW_PATTERNS, etag_timeout=TIMEOUT_S, max_workers=4,
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise StorageError(f"{uri!r}: {type(exc).__name__}: {_first_line(exc)}", reason="NotFound") from None
    except HfHubHTTPError as exc:
        raise StorageError(f"{uri!r}: the Hub answered: {_first_line(exc)}") from None
    except (OSError, ValueError) as exc:
        raise StorageError(f"{uri!r}: download failed: {_first_line(exc)}") from None
    return directory


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
