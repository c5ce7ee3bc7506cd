"""Names from outside (object keys, claim names, manifest file names, cache keys) made into paths that
stay inside the directory they belong to."""

from __future__ import annotations

from pathlib import Path

from slimserve.artifacts.errors import StorageError


def contained_path(root: Path, relative: str, *, what: str, allow_root: bool = False) -> Path:
    """`root/relative`, resolved (`..`, `//`, a leading `/` and symlinks followed); a StorageError naming
    `what` when it lands outside `root`, or on `root` itself unless `allow_root`.

    Every name that comes from outside (object keys, claim names, manifest file names) reaches the disk
    through here, so none can write or read beside the directory it belongs to.
    """
    base = root.resolve()
    resolved = (base / relative).resolve()  # an absolute `relative` replaces base, and is caught below
    if resolved == base and allow_root:
        return resolved
    if resolved == base or not resolved.is_relative_to(base):
        place = "names the directory itself" if resolved == base else f"resolves outside {root}"
        raise StorageError(f"{what} {relative!r} {place}")
    return resolved
