"""Storage URIs: where models are read from and artifacts written to.

file:///path   a local path
pvc://CLAIM/p  a PersistentVolumeClaim the operator mounts at $SLIMSERVE_PVC_ROOT/CLAIM/p (default /mnt/pvc)
s3://bucket/k  an object or a prefix in an S3-compatible store (downloaded to the cache before use)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from slimserve.artifacts.cache import cache_dir
from slimserve.artifacts.errors import StorageError

if TYPE_CHECKING:
    from slimserve.api.compression_job import S3Spec

PVC_ROOT_ENV = "SLIMSERVE_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"
LOCAL_SCHEMES = ("file", "pvc")
STORAGE_SCHEMES = ("file", "pvc", "s3")


def split_uri(uri: str) -> tuple[str, str]:
    """(scheme, rest) of `scheme://rest`; a clear error for anything else."""
    scheme, sep, rest = uri.partition("://")
    if not sep or not scheme or not rest:
        raise StorageError(f"{uri!r} is not a URI: expected scheme://path with scheme one of {', '.join(STORAGE_SCHEMES)}")
    return scheme, rest


def pvc_mount_path(uri: str) -> Path:
    """Where the operator mounts `pvc://CLAIM/sub/path`: `$SLIMSERVE_PVC_ROOT/CLAIM/sub/path`."""
    scheme, rest = split_uri(uri)
    if scheme != "pvc":
        raise StorageError(f"{uri!r} is not a pvc:// URI")
    claim, _, sub_path = rest.partition("/")
    parts = [p for p in sub_path.split("/") if p]
    if not claim or ".." in parts or claim == "..":
        raise StorageError(f"{uri!r}: expected pvc://CLAIM/path without '..'")
    root = Path(os.environ.get(PVC_ROOT_ENV) or DEFAULT_PVC_ROOT)
    return root.joinpath(claim, *parts)


def local_path(uri: str) -> Path:
    """The local path of a file:// or pvc:// URI (which need not exist yet)."""
    scheme, rest = split_uri(uri)
    if scheme == "file":
        parsed = urlparse(uri)
        return Path((parsed.netloc or "") + parsed.path)
    if scheme == "pvc":
        return pvc_mount_path(uri)
    raise StorageError(f"{uri!r}: not a local URI (file:// or pvc://)")


def resolve_uri(uri: str, s3: "S3Spec | None" = None) -> Path:
    """A local path holding what `uri` names: the path itself for file:// and pvc://, a cached download for s3://."""
    scheme, _ = split_uri(uri)
    if scheme in LOCAL_SCHEMES:
        path = local_path(uri)
        if not path.exists():
            raise StorageError(f"{uri!r}: no such file or directory ({path})", reason="NotFound")
        return path
    if scheme == "s3":
        return _download_s3(uri, s3)
    raise StorageError(f"{uri!r}: unsupported scheme {scheme!r}; use one of {', '.join(STORAGE_SCHEMES)}")


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


def s3_client(s3: "S3Spec | None" = None):
    """A boto3 S3 client for the spec's endpoint and region; credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY."""
    import boto3
    from botocore.config import Config

    # A session of its own: boto3's default session caches the credentials it resolved first.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=s3.endpoint if s3 and s3.endpoint else os.environ.get("AWS_ENDPOINT_URL") or None,
        region_name=(s3.region if s3 and s3.region else None) or os.environ.get("AWS_REGION") or "us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


def _bucket_and_key(uri: str) -> tuple[str, str]:
    scheme, rest = split_uri(uri)
    if scheme != "s3":
        raise StorageError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri!r}: expected s3://BUCKET/KEY")
    return bucket, key


def _download_s3(uri: str, s3: "S3Spec | None") -> Path:
    """Download an object, or every object under a prefix, into a fresh cache folder keyed by the URI."""
    bucket, key = _bucket_and_key(uri)
    client = s3_client(s3)
    endpoint = (s3.endpoint if s3 else None) or ""
    target = cache_dir("s3") / hashlib.sha256(f"{endpoint}|{uri}".encode()).hexdigest()[:24]
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        prefix = key.rstrip("/")
        keys = _list_keys(client, bucket, prefix + "/" if prefix else "")
        if keys:
            for object_key in keys:
                relative = object_key[len(prefix) + 1 if prefix else 0 :]
                destination = staging / "content" / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, object_key, str(destination))
        else:
            (staging / "content").mkdir()
            client.download_file(bucket, key, str(staging / "content" / Path(key).name))
            return _replace(staging, target) / Path(key).name
        return _replace(staging, target)
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"{uri!r}: download failed: {exc}", reason="NotFound" if "404" in str(exc) else None) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
