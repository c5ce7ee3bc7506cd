"""SlimServe's local cache directory (trained demo weights, downloaded artifacts, built tools)."""

from __future__ import annotations

from pathlib import Path

from slimserve.api.workload import CACHE
from slimserve.artifacts.paths import contained_path


def cache_root() -> Path:
    """`$SLIMSERVE_CACHE`, or `~/.cache/slimserve`."""
    configured = CACHE.read()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "slimserve"


def cache_dir(*parts: str) -> Path:
    """A sub-directory of the cache, created on first use."""
    path = contained_path(cache_root(), "/".join(parts), what="cache folder", allow_root=True)
    path.mkdir(parents=True, exist_ok=True)
    return path
