"""The download cache: what http(s):// and hf:// URIs name, fetched once per key and kept.

Each download lands in `ROOT/KEY/` (KEY: the sha256 of what identifies the content: a pinned digest, or the
URI and the endpoint it was read from). A lock file beside it (fcntl, released by the kernel when a process
dies) makes processes sharing the cache, replicas on one shared volume among them, download a key once: the
first takes the lock and fetches, the others wait for it and then find the finished directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from slimserve.api.workload import DOWNLOAD_CACHE
from slimserve.artifacts.cache import cache_dir
from slimserve.artifacts.paths import contained_path

DONE_FILE = "download.json"  # written last: a directory without it is an interrupted download


def download_root() -> Path:
    """`$SLIMSERVE_DOWNLOAD_CACHE` (a shared volume the operator mounts), else the local cache's `downloads`."""
    configured = DOWNLOAD_CACHE.read()
    if configured:
        root = Path(configured)
        root.mkdir(parents=True, exist_ok=True)
        return root
    return cache_dir("downloads")


def cache_key(*identity: str) -> str:
    return hashlib.sha256("\n".join(identity).encode()).hexdigest()


def cached_download(key: str, fetch: Callable[[Path], Path]) -> Path:
    """The path `fetch(directory)` returned when it filled `directory` for `key`, fetched at most once.

    `fetch` gets an empty directory and returns a path inside it; an exception leaves nothing behind.
    """
    root = download_root()
    entry = root / key
    with open(root / f"{key}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until the download is complete or has failed
        done = _finished(entry)
        if done is not None:
            return done
        shutil.rmtree(entry, ignore_errors=True)  # what an interrupted download left
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=root))
        try:
            content = staging / "content"
            content.mkdir()
            relative = fetch(content).relative_to(content).as_posix()
            (content / DONE_FILE).write_text(json.dumps({"path": relative}))
            content.rename(entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return _finished(entry) or entry


def _finished(entry: Path) -> Path | None:
    try:
        relative = json.loads((entry / DONE_FILE).read_text())["path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return contained_path(entry, relative, what=f"download cache entry {entry.name}: path", allow_root=True)
