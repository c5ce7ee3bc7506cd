"""Writing and reading SlimServe artifacts: safetensors + manifest.json, written atomically, read verified."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from slimserve.artifacts.digest import sha256_bytes, sha256_file
from slimserve.artifacts.errors import ArtifactError, StorageError
from slimserve.artifacts.manifest import FORMAT_VERSION, MANIFEST_NAME, WEIGHTS_NAME, FileEntry, Manifest
from slimserve.artifacts.paths import contained_path
from slimserve.artifacts.sparse import pack_sparse, unpack_sparse
from slimserve.artifacts.storage import check_writable, local_path, publish_directory, resolve_uri, split_uri

if TYPE_CHECKING:
    from slimserve.api.storage import ArtifactRef, S3Spec


@dataclass(frozen=True)
class Artifact:
    """A verified artifact on local disk: every file matched its manifest digest when it was loaded."""

    path: Path
    manifest: Manifest
    digest: str  # "sha256:" + sha256 of manifest.json's bytes
    size_bytes: int  # all files, manifest included

    def file(self, name: str) -> Path:
        if name not in self.manifest.files:
            raise ArtifactError(f"artifact {self.path}: no file {name!r} in its manifest")
        return self.path / name

    def tensors(self) -> dict[str, torch.Tensor]:
        """All stored tensors, packed ones expanded (safetensors: no pickle)."""
        weights = self.file(self.manifest.weights)
        try:
            stored = load_file(str(weights))
        except (SafetensorError, OSError) as exc:
            raise ArtifactError(f"artifact {self.path}: {weights.name} is not valid safetensors: {exc}") from exc
        try:
            return unpack_sparse(stored, self.manifest.tensor_encoding)
        except ValueError as exc:
            raise ArtifactError(f"artifact {self.path}: {exc}") from exc

    @property
    def weights_bytes(self) -> int:
        return self.manifest.files[self.manifest.weights].size


def save_artifact(
    uri: str,
    *,
    family: str,
    recipe: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    quantization: dict[str, Any] | None = None,
    signature: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
    source: str = "",
    s3: "S3Spec | None" = None,
    within_budget: bool = True,
) -> "ArtifactRef":
    """Write an artifact to `uri` (file://, pvc:// or s3://) and return its reference (uri, digest, size).

    Local targets are written to a temporary directory beside the target and renamed into place, so a
    reader sees the old artifact or the new one, never a part; an existing directory that is not an
    artifact is never overwritten.
    """
    from slimserve.api.storage import ArtifactRef

    scheme, _ = split_uri(uri)
    if scheme == "s3":
        staging_parent = Path(tempfile.mkdtemp(prefix="slimserve-artifact-"))
        try:
            staging = staging_parent / "artifact"
            digest, size = _write_directory(staging, family, recipe, tensors, quantization, signature, metrics, extra_files, source, within_budget)
            publish_directory(staging, uri, s3)
        finally:
            shutil.rmtree(staging_parent, ignore_errors=True)
        return ArtifactRef(uri=uri, digest=digest, size_bytes=size, format=FORMAT_VERSION)

    target = local_path(uri)
    _refuse_foreign_directory(uri, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        digest, size = _write_directory(staging, family, recipe, tensors, quantization, signature, metrics, extra_files, source, within_budget)
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ArtifactRef(uri=uri, digest=digest, size_bytes=size, format=FORMAT_VERSION)


def check_output(uri: str, s3: "S3Spec | None" = None) -> None:
    """Fail now, with a StorageError, where `save_artifact(uri)` would fail at the end: a place that cannot
    be written, or a local path holding something that is not an artifact."""
    if split_uri(uri)[0] != "s3":
        _refuse_foreign_directory(uri, local_path(uri))
    check_writable(uri, s3)


def load_artifact(uri: str | Path, *, s3: "S3Spec | None" = None, expected_digest: str | None = None) -> Artifact:
    """Read and verify an artifact (a URI, or a local directory): manifest format, then the size and
    sha256 of every file it lists."""
    path = uri if isinstance(uri, Path) else resolve_uri(uri, s3)
    manifest_path = Path(path) / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ArtifactError(f"{uri}: not a SlimServe artifact (no {MANIFEST_NAME})")
    raw = manifest_path.read_bytes()
    digest = "sha256:" + sha256_bytes(raw)
    if expected_digest is not None and expected_digest != digest:
        raise ArtifactError(f"{uri}: digest mismatch: expected {expected_digest}, found {digest}", reason="DigestMismatch")
    try:
        manifest = Manifest.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise ArtifactError(f"{uri}: {MANIFEST_NAME} is not a valid manifest: {_first_line(exc)}") from None
    if manifest.format != FORMAT_VERSION:
        raise ArtifactError(f"{uri}: unsupported artifact format {manifest.format!r} (this reader knows {FORMAT_VERSION})")
    if manifest.weights not in manifest.files:
        raise ArtifactError(f"{uri}: manifest lists no digest for its weights file {manifest.weights!r}")
    total = len(raw)
    for name, entry in manifest.files.items():
        total += _verify_file(uri, Path(path), name, entry)
    return Artifact(path=Path(path), manifest=manifest, digest=digest, size_bytes=total)


def _verify_file(uri: str, root: Path, name: str, entry: FileEntry) -> int:
    try:
        file_path = contained_path(root, name, what="file")
    except StorageError as exc:
        raise ArtifactError(f"{uri}: manifest names a file outside the artifact: {exc}") from None
    if not file_path.is_file():
        raise ArtifactError(f"{uri}: {name} is missing", reason="CorruptArtifact")
    size = file_path.stat().st_size
    if size != entry.size:
        raise ArtifactError(
            f"{uri}: {name} is {size} bytes, manifest says {entry.size} (truncated or corrupt)", reason="CorruptArtifact"
        )
    actual = sha256_file(file_path)
    if actual != entry.sha256:
        raise ArtifactError(
            f"{uri}: {name} sha256 {actual[:16]}... does not match the manifest's {entry.sha256[:16]}... (tampered or corrupt)",
            reason="DigestMismatch",
        )
    return size


def _write_directory(
    directory: Path,
    family: str,
    recipe: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    quantization: dict[str, Any] | None,
    signature: dict[str, Any] | None,
    metrics: dict[str, Any] | None,
    extra_files: dict[str, bytes] | None,
    source: str,
    within_budget: bool,
) -> tuple[str, int]:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)  # servers may run as another user than the compression pod
    encoding = write_weights(directory / WEIGHTS_NAME, tensors)
    for name, data in (extra_files or {}).items():
        if name in (WEIGHTS_NAME, MANIFEST_NAME) or "/" in name or name.startswith("."):
            raise ValueError(f"extra file name {name!r} is reserved or not a plain file name")
        (directory / name).write_bytes(data)
    files = {
        p.name: FileEntry(sha256=sha256_file(p), size=p.stat().st_size)
        for p in sorted(directory.iterdir())
        if p.is_file()
    }
    manifest = Manifest(
        format=FORMAT_VERSION,
        family=family,
        recipe=recipe,
        source=source,
        weights=WEIGHTS_NAME,
        tensor_encoding=encoding,
        quantization=quantization,
        signature=signature or {},
        metrics=metrics,
        files=files,
        within_budget=within_budget,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    raw = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True).encode()
    (directory / MANIFEST_NAME).write_bytes(raw)
    _fsync_tree(directory)
    return "sha256:" + sha256_bytes(raw), len(raw) + sum(entry.size for entry in files.values())


def write_weights(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """Write `tensors` as one safetensors file, streamed from the tensors' own memory (safetensors writes from
    their pointers), and return the sparse encoding of those it packed. Only tensors that share memory with
    another (which safetensors refuses) and non-contiguous ones are copied."""
    stored, encoding = pack_sparse({name: t.detach().contiguous() for name, t in tensors.items()})
    seen: set[int] = set()
    unshared = {}
    for name, tensor in stored.items():
        pointer = tensor.untyped_storage().data_ptr()
        shares = pointer in seen or tensor.untyped_storage().nbytes() != tensor.nbytes
        unshared[name] = tensor.clone() if shares else tensor
        seen.add(pointer)
    save_file(unshared, str(path))
    return encoding


def _refuse_foreign_directory(uri: str, target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise StorageError(f"{uri}: exists and is a file, not an artifact directory")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_NAME).is_file():
        raise StorageError(f"{uri}: directory exists and is not a SlimServe artifact; refusing to overwrite it")


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename staging to target; an older artifact there is moved aside first and removed after."""
    if not target.exists():
        staging.rename(target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    retired.rmdir()
    target.rename(retired)
    try:
        staging.rename(target)
    except BaseException:
        retired.rename(target)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        path.chmod(0o644)
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]
