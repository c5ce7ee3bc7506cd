"""SlimServe's local cache directory (trained demo weights, downloaded artifacts, built tools)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$SLIMSERVE_CACHE`, or `~/.cache/slimserve`."""
    configured = os.environ.get("SLIMSERVE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "slimserve"


def cache_dir(*parts: str) -> Path:
    """A sub-directory of the cache, created on first use."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
