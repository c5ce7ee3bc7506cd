"""Storage URIs: where models are read from and artifacts written to (parsed by `slimserve.api.uri`).

file:///path   a local path
pvc://CLAIM/p  a PersistentVolumeClaim the operator mounts at $SLIMSERVE_PVC_ROOT/CLAIM/p (default /mnt/pvc)
s3://bucket/k  an object or a prefix in an S3-compatible store (downloaded to the cache before use)
http(s)://, hf://  read-only model sources, downloaded once into the download cache (`download_cache`)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from slimserve.api.uri import (
    DOWNLOAD_SCHEMES,
    HF,
    LOCAL_SCHEMES,
    PVC,
    S3,
    SOURCE_SCHEMES,
    STORAGE_SCHEMES,
    InvalidUri,
    StorageUri,
    parse_uri,
)
from slimserve.api.workload import DEFAULTS, PVC_ROOT
from slimserve.artifacts.cache import cache_dir
from slimserve.artifacts.errors import StorageError
from slimserve.artifacts.paths import contained_path

if TYPE_CHECKING:
    from slimserve.api.storage import S3Spec


def parse_storage_uri(uri: str, schemes: tuple[str, ...] = STORAGE_SCHEMES) -> StorageUri:
    """The parts of a file://, pvc:// or s3:// URI, by the one set of rules (`slimserve.api.uri`); else StorageError."""
    try:
        return parse_uri(uri, schemes)
    except InvalidUri as exc:
        raise StorageError(str(exc)) from None


def split_uri(uri: str) -> tuple[str, str]:
    """(scheme, rest) of `scheme://rest`; a clear error for anything else."""
    return parse_storage_uri(uri).scheme, uri.partition("://")[2]


def pvc_mount_path(uri: str) -> Path:
    """Where the operator mounts `pvc://CLAIM/sub/path`: `$SLIMSERVE_PVC_ROOT/CLAIM/sub/path`."""
    parsed = parse_storage_uri(uri)
    if parsed.scheme != PVC:
        raise StorageError(f"{uri!r} is not a pvc:// URI")
    # Symlinks inside a claim may not lead out of it.
    root = Path(PVC_ROOT.read() or DEFAULTS.pvc_root)
    claim_root = contained_path(root, parsed.authority, what=f"{uri!r}: claim")
    return contained_path(claim_root, parsed.path.lstrip("/"), what=f"{uri!r}: path", allow_root=True)


def local_path(uri: str) -> Path:
    """The local path of a file:// or pvc:// URI (which need not exist yet)."""
    parsed = parse_storage_uri(uri)
    if parsed.scheme == PVC:
        return pvc_mount_path(uri)
    if parsed.local_path is None:
        raise StorageError(f"{uri!r}: not a local URI (file:// or pvc://)")
    return Path(parsed.local_path)


def resolve_uri(uri: str, s3: "S3Spec | None" = None) -> Path:
    """A local path holding what `uri` names: the path itself for file:// and pvc://, a cached download for
    s3://, http(s):// and hf://."""
    parsed = parse_storage_uri(uri, SOURCE_SCHEMES)
    if parsed.scheme in DOWNLOAD_SCHEMES:
        return _download_source(parsed)
    if parsed.scheme in LOCAL_SCHEMES:
        path = local_path(uri)
        if not path.exists():
            raise StorageError(f"{uri!r}: no such file or directory ({path})", reason="NotFound")
        return path
    return _download_s3(uri, s3)


def check_writable(uri: str, s3: "S3Spec | None" = None) -> None:
    """A StorageError now if nothing can be written at `uri`, so a run fails before it spends its time:
    the nearest existing folder of a local path must take a new directory, an S3 prefix a new object."""
    if parse_storage_uri(uri).scheme in LOCAL_SCHEMES:
        _check_local_writable(uri, local_path(uri))
    else:
        _check_s3_writable(uri, s3)


def _check_local_writable(uri: str, target: Path) -> None:
    # Writers create the missing parents and a staging directory beside the target: probe the same place.
    existing = target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise StorageError(f"{uri!r}: cannot write there, {existing} is a file, not a directory")
    try:
        Path(tempfile.mkdtemp(prefix=".slimserve-write-check-", dir=existing)).rmdir()
    except OSError as exc:
        raise StorageError(f"{uri!r}: cannot write under {existing}: {exc.strerror or exc}") from None


def _check_s3_writable(uri: str, s3: "S3Spec | None") -> None:
    bucket, prefix = _bucket_and_key(uri)
    client = s3_client(s3)
    probe = "/".join(filter(None, [prefix.rstrip("/"), f".slimserve-write-check-{uuid.uuid4().hex}"]))
    try:
        client.put_object(Bucket=bucket, Key=probe, Body=b"")
    except Exception as exc:  # botocore raises many types; all mean the same to the user
        raise StorageError(f"{uri!r}: cannot write to bucket {bucket!r}: {exc}") from None
    try:
        client.delete_object(Bucket=bucket, Key=probe)
    except Exception:
        pass  # credentials that may write but not delete: the empty probe stays, and no manifest lists it


def publish_directory(local_dir: Path, uri: str, s3: "S3Spec | None" = None) -> None:
    """Upload a finished local directory to an s3:// prefix; `manifest.json` goes last so readers never see half."""
    bucket, prefix = _bucket_and_key(uri)
    client = s3_client(s3)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == "manifest.json")
    try:
        for path in files:
            key = "/".join(filter(None, [prefix.rstrip("/"), path.relative_to(local_dir).as_posix()]))
            client.upload_file(str(path), bucket, key)
    except Exception as exc:  # botocore raises many types; all mean the same to the user
        raise StorageError(f"{uri!r}: upload failed: {exc}") from exc


def put_object(path: Path, uri: str, s3: "S3Spec | None" = None) -> None:
    """Upload one local file as the object `uri` names (one PUT: readers see the old object or the new one)."""
    bucket, key = _bucket_and_key(uri)
    try:
        s3_client(s3).upload_file(str(path), bucket, key)
    except Exception as exc:  # botocore raises many types; all mean the same to the user
        raise StorageError(f"{uri!r}: upload failed: {exc}") from exc


def get_object(uri: str, destination: Path, max_bytes: int, s3: "S3Spec | None" = None) -> bool:
    """Download the object `uri` names to `destination`, at most `max_bytes` of it (a larger one is refused);
    False when there is no such object."""
    from botocore.exceptions import ClientError

    bucket, key = _bucket_and_key(uri)
    try:
        response = s3_client(s3).get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return False
        raise StorageError(f"{uri!r}: cannot read: {exc}") from exc
    except Exception as exc:
        raise StorageError(f"{uri!r}: cannot read: {exc}") from exc
    body, written = response["Body"], 0
    try:
        if response["ContentLength"] > max_bytes:
            raise StorageError(f"{uri!r}: {response['ContentLength']} bytes, more than the {max_bytes} expected")
        with open(destination, "wb") as handle:
            for chunk in body.iter_chunks(1 << 20):
                written += len(chunk)
                if written > max_bytes:  # the object was replaced by a larger one mid-way
                    raise StorageError(f"{uri!r}: more than the {max_bytes} bytes expected")
                handle.write(chunk)
    except StorageError:
        destination.unlink(missing_ok=True)
        raise
    except Exception as exc:
        destination.unlink(missing_ok=True)
        raise StorageError(f"{uri!r}: download failed: {exc}") from exc
    finally:
        body.close()
    return True


def delete_prefix(uri: str, s3: "S3Spec | None" = None) -> None:
    """Delete every object under the s3:// prefix `uri`."""
    bucket, prefix = _bucket_and_key(uri)
    client = s3_client(s3)
    try:
        keys = _list_keys(client, bucket, prefix.rstrip("/") + "/")
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})
    except Exception as exc:
        raise StorageError(f"{uri!r}: delete failed: {exc}") from exc


def s3_client(s3: "S3Spec | None" = None):
    """A boto3 S3 client for the spec's endpoint and region; credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY."""
    import boto3
    from botocore.config import Config

    # A session of its own: boto3's default session caches the credentials it resolved first.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=s3.endpoint if s3 and s3.endpoint else os.environ.get("AWS_ENDPOINT_URL") or None,
        region_name=(s3.region if s3 and s3.region else None) or os.environ.get("AWS_REGION") or "us-east-1",
        # Bounded waits: an unreachable endpoint fails in seconds, not after botocore's minute per attempt.
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}, connect_timeout=10, read_timeout=60),
    )


def _bucket_and_key(uri: str) -> tuple[str, str]:
    parsed = parse_storage_uri(uri)
    if parsed.scheme != S3:
        raise StorageError(f"{uri!r} is not an s3:// URI")
    return parsed.authority, parsed.path


def _download_source(parsed: StorageUri) -> Path:
    """An http(s):// or hf:// source, fetched once per content (a pinned digest) or per URI and endpoint."""
    from slimserve.artifacts.download_cache import cache_key, cached_download

    if parsed.scheme == HF:
        from slimserve.artifacts.hf_source import fetch_hf, hf_endpoint

        return cached_download(cache_key(HF, hf_endpoint() or "", parsed.uri), lambda directory: fetch_hf(parsed, directory))
    from slimserve.artifacts.http_source import fetch_http

    identity = ("sha256", parsed.sha256) if parsed.sha256 else ("url", parsed.http_url or "")
    return cached_download(cache_key(*identity), lambda directory: fetch_http(parsed, directory))


def _download_s3(uri: str, s3: "S3Spec | None") -> Path:
    """Download an object, or every object under a prefix, into a fresh cache folder keyed by the URI."""
    bucket, key = _bucket_and_key(uri)
    client = s3_client(s3)
    endpoint = (s3.endpoint if s3 else None) or ""
    target = cache_dir("s3") / hashlib.sha256(f"{endpoint}|{uri}".encode()).hexdigest()[:24]
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        content = staging / "content"
        content.mkdir()
        prefix = key.rstrip("/")
        # Where the object goes if the URI names one object rather than a prefix; checked before any request.
        single = contained_path(content, prefix.rpartition("/")[2], what=f"{uri!r}: object key") if prefix else None
        keys = _list_keys(client, bucket, prefix + "/" if prefix else "")
        if keys:
            destinations = _download_destinations(content, keys, len(prefix) + 1 if prefix else 0, uri)
            for object_key, destination in destinations.items():
                destination.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, object_key, str(destination))
            return _replace(staging, target)
        if single is None:
            raise StorageError(f"{uri!r}: the bucket holds no objects", reason="NotFound")
        client.download_file(bucket, key, str(single))
        return _replace(staging, target) / single.name
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"{uri!r}: download failed: {exc}", reason="NotFound" if "404" in str(exc) else None) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _download_destinations(content: Path, keys: list[str], strip: int, uri: str) -> dict[str, Path]:
    """Where each object of a prefix goes under `content`; every key is checked before anything is written.

    S3 keys are free-form: `../`, `//` or a leading `/` would otherwise place a file beside the download,
    and two keys resolving to one file would silently overwrite each other.
    """
    destinations: dict[str, Path] = {}
    claimed: dict[Path, str] = {}
    for object_key in keys:
        destination = contained_path(content, object_key[strip:], what=f"{uri!r}: object key {object_key!r}, relative path")
        if destination in claimed:
            raise StorageError(f"{uri!r}: object keys {claimed[destination]!r} and {object_key!r} name the same file")
        claimed[destination] = object_key
        destinations[object_key] = destination
    return destinations


def _list_keys(client, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []) if not item["Key"].endswith("/"))
    return keys


def _replace(staging: Path, target: Path) -> Path:
    """Move staging/content to target, replacing an older download."""
    if target.exists():
        shutil.rmtree(target)
    (staging / "content").rename(target)
    return target
