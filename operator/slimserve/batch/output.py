"""The output prefix of a BatchInference: one part per shard, its sidecar, and the run's manifest.

    part-00003.jsonl | part-00003.parquet   the shard's records, in input order
    part-00003.json                         its sidecar: run id, records, sha256 of the part, the model
    _manifest.json                          every part with its records and digest, the totals

Every file appears whole or not at all: a local file is written beside its place and renamed into it, an S3
object is one PUT of a finished local file. A sidecar is written after its part, the manifest after every
sidecar, so a sidecar vouches for a finished part and a manifest for a finished run. The manifest is made
from the sidecars alone, so whichever pod writes it writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimserve.api.uri import S3
from slimserve.artifacts.cache import cache_dir
from slimserve.artifacts.errors import StorageError
from slimserve.artifacts.paths import contained_path
from slimserve.artifacts.storage import local_path, parse_storage_uri, s3_client
from slimserve.batch.errors import OutputConflict

if TYPE_CHECKING:
    from slimserve.api.storage import S3Spec

MANIFEST_NAME = "_manifest.json"
PART_FORMAT = "slimserve/batch-part-v1"
MANIFEST_FORMAT = "slimserve/batch-v1"
SIDECAR_LIMIT_BYTES = 1024 * 1024  # sidecars are a few hundred bytes; a manifest holds one line per part
MANIFEST_LIMIT_BYTES = 64 * 1024 * 1024


def part_name(index: int, output_format: str) -> str:
    return f"part-{index:05d}.{output_format}"


def sidecar_name(index: int) -> str:
    return f"part-{index:05d}.json"


def canonical_json(value: Any) -> bytes:
    return (json.dumps(value, sort_keys=True, separators=(",", ":")) + "\n").encode()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


class OutputPrefix:
    """Files directly under an output prefix: listed, read (bounded), hashed and published whole."""

    def __init__(self, uri: str, s3: "S3Spec | None" = None):
        if not uri.endswith("/"):
            raise StorageError(f"spec.output.uri: {uri!r} must be a prefix ending in '/'")
        self.uri = uri
        self._s3 = parse_storage_uri(uri).scheme == S3
        if self._s3:
            parsed = parse_storage_uri(uri)
            self._bucket, self._key_prefix = parsed.authority, parsed.path
            self._client = s3_client(s3)
        else:
            self._root = local_path(uri)

    def uri_of(self, name: str) -> str:
        return self.uri + name

    def names(self) -> set[str]:
        if not self._s3:
            return {path.name for path in self._root.iterdir() if path.is_file()} if self._root.is_dir() else set()
        names = set()
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=self._key_prefix, Delimiter="/"
        )
        for page in self._call(lambda: list(pages), "list"):
            names.update(item["Key"][len(self._key_prefix):] for item in page.get("Contents", []))
        return names

    def read(self, name: str, limit: int) -> bytes | None:
        """The file's bytes, None when it does not exist; StorageError past `limit` bytes."""
        if not self._s3:
            path = self._path(name)
            if not path.is_file():
                return None
            if path.stat().st_size > limit:
                raise StorageError(f"{self.uri_of(name)}: larger than {limit} bytes")
            return path.read_bytes()
        found = self._get(name)
        if found is None:
            return None
        if found["ContentLength"] > limit:
            raise StorageError(f"{self.uri_of(name)}: larger than {limit} bytes")
        return found["Body"].read(limit + 1)

    def digest(self, name: str) -> str | None:
        """sha256 of the file's content, None when it does not exist."""
        if not self._s3:
            path = self._path(name)
            return file_digest(path) if path.is_file() else None
        found = self._get(name)
        if found is None:
            return None
        digest = hashlib.sha256()
        for chunk in found["Body"].iter_chunks(1 << 20):
            digest.update(chunk)
        return f"sha256:{digest.hexdigest()}"

    def staging(self, name: str) -> Path:
        """A fresh local file to write `name` into before `publish`: beside its place (same file system, so
        the rename is atomic) or, for S3, in the cache."""
        if self._s3:
            folder = Path(tempfile.mkdtemp(prefix=".batch-", dir=cache_dir("batch")))
            return folder / name
        target = self._path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.parent / f".{name}.{uuid.uuid4().hex}.tmp"

    def publish(self, staged: Path, name: str) -> None:
        """Make the finished `staged` file the prefix's `name`, whole."""
        if not self._s3:
            os.replace(staged, self._path(name))
            return
        try:
            self._call(lambda: self._client.upload_file(str(staged), self._bucket, self._key_prefix + name), "write")
        finally:
            shutil.rmtree(staged.parent, ignore_errors=True)

    def write(self, name: str, data: bytes) -> None:
        staged = self.staging(name)
        staged.write_bytes(data)
        self.publish(staged, name)

    def remove(self, name: str) -> None:
        if not self._s3:
            self._path(name).unlink(missing_ok=True)
        else:
            self._call(lambda: self._client.delete_object(Bucket=self._bucket, Key=self._key_prefix + name), "delete")

    def discard_staging(self, name: str) -> None:
        """Half-written files of `name` a killed writer left behind (local only: S3 never shows one)."""
        if not self._s3 and self._root.is_dir():
            for stale in self._root.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)

    def _get(self, name: str) -> dict[str, Any] | None:
        """The S3 object's GET answer (its body streams), None when there is no such object."""
        try:
            return self._client.get_object(Bucket=self._bucket, Key=self._key_prefix + name)
        except self._client.exceptions.NoSuchKey:
            return None
        except Exception as exc:  # botocore raises many types; all mean the same to the user
            raise StorageError(f"{self.uri_of(name)}: cannot read: {exc}") from None

    def _path(self, name: str) -> Path:
        return contained_path(self._root, name, what=f"{self.uri!r}: file")

    def _call(self, action, what: str):
        try:
            return action()
        except StorageError:
            raise
        except Exception as exc:  # botocore raises many types; all mean the same to the user
            raise StorageError(f"{self.uri}: cannot {what}: {exc}") from None


def read_json(prefix: OutputPrefix, name: str, limit: int = SIDECAR_LIMIT_BYTES) -> dict[str, Any] | None:
    """A sidecar or manifest, None when absent or not one (a file that does not parse vouches for nothing)."""
    data = prefix.read(name, limit)
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def check_prefix(prefix: OutputPrefix, run_id: str, overwrite: bool) -> None:
    """Refuse a prefix holding another run's manifest or parts, unless `overwrite`; with it, another run's
    manifest is removed first, so the prefix never shows a manifest that does not describe it."""
    others = {}
    for name in sorted(prefix.names()):
        if name == MANIFEST_NAME or (name.startswith("part-") and name.endswith(".json")):
            found = read_json(prefix, name, MANIFEST_LIMIT_BYTES if name == MANIFEST_NAME else SIDECAR_LIMIT_BYTES)
            if found is not None and found.get("runId") != run_id:
                others[name] = str(found.get("runId"))
    if not others:
        return
    if not overwrite:
        name, other = next(iter(others.items()))
        raise OutputConflict(
            f"spec.output.uri: {prefix.uri} holds results of another run ({name}: run {other}); "
            "set spec.output.overwrite: true to replace them, or choose another prefix"
        )
    if MANIFEST_NAME in others:
        prefix.remove(MANIFEST_NAME)


def finished_part(prefix: OutputPrefix, index: int, run_id: str) -> dict[str, Any] | None:
    """The sidecar of shard `index` when it vouches for a part of this run whose content still matches."""
    sidecar = read_json(prefix, sidecar_name(index))
    if sidecar is None or sidecar.get("runId") != run_id or sidecar.get("shard") != index:
        return None
    part = sidecar.get("part")
    if not isinstance(part, str) or part != Path(part).name:
        return None
    return sidecar if prefix.digest(part) == sidecar.get("sha256") else None


def sidecar(run_id: str, index: int, part: str, records: int, digest: str, model: Mapping[str, str]) -> dict[str, Any]:
    return {"format": PART_FORMAT, "runId": run_id, "shard": index, "part": part, "records": records,
            "sha256": digest, "model": dict(model)}


def build_manifest(run_id: str, sidecars: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest of a finished run: its parts in shard order. The same sidecars make the same bytes."""
    return {
        "format": MANIFEST_FORMAT,
        "runId": run_id,
        "model": sidecars[0]["model"] if sidecars else {},
        "shards": len(sidecars),
        "records": sum(s["records"] for s in sidecars),
        "parts": [{"name": s["part"], "records": s["records"], "sha256": s["sha256"]} for s in sidecars],
    }


@dataclass(frozen=True)
class ManifestWritten:
    uri: str
    digest: str
    records: int


def write_manifest_if_complete(prefix: OutputPrefix, run_id: str, shards: int) -> ManifestWritten | None:
    """When every shard's sidecar of this run is there, write the manifest and say where; else None."""
    sidecars = []
    for index in range(shards):
        found = read_json(prefix, sidecar_name(index))
        if found is None or found.get("runId") != run_id:
            return None
        sidecars.append(found)
    manifest = build_manifest(run_id, sidecars)
    data = canonical_json(manifest)
    prefix.write(MANIFEST_NAME, data)
    return ManifestWritten(prefix.uri_of(MANIFEST_NAME), f"sha256:{hashlib.sha256(data).hexdigest()}", manifest["records"])


def read_records(prefix_path: Path) -> Iterator[dict[str, Any]]:
    """Every output record of a finished local run, in order (its manifest's parts): for tools and tests."""
    manifest = json.loads((prefix_path / MANIFEST_NAME).read_text())
    for part in manifest["parts"]:
        path = prefix_path / part["name"]
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            yield from pq.read_table(path).to_pylist()
        else:
            with path.open() as stream:
                yield from (json.loads(line) for line in stream)
