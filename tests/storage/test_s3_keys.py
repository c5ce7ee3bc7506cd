"""Object keys, claim names and manifest file names cannot place or read a file outside the directory they
belong to. AWS S3 stores keys with `..`, `//` or `.` segments that MinIO refuses to hold, so those listings
come from botocore's Stubber; what MinIO can hold runs against it."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from slimserve.api.compression_job import S3Spec
from slimserve.artifacts import ArtifactError, StorageError, load_artifact, save_artifact, storage
from slimserve.artifacts.storage import pvc_mount_path, resolve_uri

BUCKET = "models"


@dataclass
class StubbedS3:
    stubber: Stubber
    requests: list[str]  # operations the client sent, in order


@pytest.fixture
def stubbed_s3(monkeypatch, tmp_path):
    """A real botocore client whose answers are queued in a Stubber; every download goes through it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("SLIMSERVE_CACHE", str(tmp_path / "cache"))
    client = storage.s3_client(S3Spec(endpoint="http://127.0.0.1:9"))
    requests: list[str] = []
    client.meta.events.register("before-parameter-build.s3", lambda model, **_: requests.append(model.name))
    monkeypatch.setattr(storage, "s3_client", lambda s3=None: client)
    with Stubber(client) as stubber:
        yield StubbedS3(stubber, requests)


def _serve_objects(s3: StubbedS3, prefix: str, objects: dict[str, bytes]) -> None:
    """The listing of `prefix`, then for each object in order what download_file asks (HEAD, then GET)."""
    listing = {"Contents": [{"Key": key, "Size": len(body)} for key, body in objects.items()], "KeyCount": len(objects)}
    s3.stubber.add_response("list_objects_v2", listing, {"Bucket": BUCKET, "Prefix": prefix})
    for body in objects.values():
        s3.stubber.add_response("head_object", {"ContentLength": len(body)})
        s3.stubber.add_response("get_object", {"Body": StreamingBody(io.BytesIO(body), len(body)), "ContentLength": len(body)})


# key -> (where the code before this check wrote it, relative to tmp_path; what the error says)
ESCAPING_KEYS = {
    "art/../../../escaped-dotdot": ("cache/escaped-dotdot", "resolves outside"),
    "art/{tmp}/escaped-absolute": ("escaped-absolute", "resolves outside"),  # "art//tmp/..." after the prefix: absolute
    "art/.": (None, "names the directory itself"),
}


@pytest.mark.parametrize("key_form", list(ESCAPING_KEYS))
def test_listed_key_that_escapes_the_download_is_refused_before_anything_is_written(stubbed_s3, tmp_path, key_form):
    key = key_form.format(tmp=tmp_path)
    written, problem = ESCAPING_KEYS[key_form]
    _serve_objects(stubbed_s3, "art/", {"art/manifest.json": b"{}", key: b"payload"})
    with pytest.raises(StorageError) as refused:
        resolve_uri(f"s3://{BUCKET}/art")
    assert f"object key {key!r}" in str(refused.value) and problem in str(refused.value)
    if written:
        assert not (tmp_path / written).exists()
    assert stubbed_s3.requests == ["ListObjectsV2"]  # nothing was fetched, not even the harmless object
    assert list((tmp_path / "cache" / "s3").iterdir()) == []  # and no download folder is left


def test_two_keys_naming_one_file_are_refused(stubbed_s3, tmp_path):
    _serve_objects(stubbed_s3, "art/", {"art/weights.safetensors": b"a", "art/x/../weights.safetensors": b"b"})
    with pytest.raises(StorageError, match="'art/weights.safetensors' and 'art/x/../weights.safetensors' name the same file"):
        resolve_uri(f"s3://{BUCKET}/art")


def test_plain_nested_keys_still_download(stubbed_s3):
    _serve_objects(stubbed_s3, "art/", {"art/manifest.json": b"{}", "art/sub/notes.txt": b"notes"})
    downloaded = resolve_uri(f"s3://{BUCKET}/art")
    assert (downloaded / "sub" / "notes.txt").read_bytes() == b"notes" and (downloaded / "manifest.json").read_bytes() == b"{}"


def test_uri_naming_a_parent_is_refused_against_minio(s3_env):
    server = s3_env
    s3 = S3Spec(endpoint=server.endpoint)
    server.client().put_object(Bucket=server.bucket, Key="keys/model.pt2", Body=b"x")
    with pytest.raises(StorageError, match=r"object key '\.\.' names the directory itself|resolves outside"):
        resolve_uri(f"s3://{server.bucket}/keys/..", s3)
    # MinIO stores "/keys/nested.txt" as "keys/nested.txt": it downloads inside, as any plain key.
    server.client().put_object(Bucket=server.bucket, Key="/keys/nested.txt", Body=b"nested")
    downloaded = resolve_uri(f"s3://{server.bucket}/keys", s3)
    assert (downloaded / "nested.txt").read_bytes() == b"nested"


def test_pvc_symlink_leading_out_of_the_claim_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMSERVE_PVC_ROOT", str(tmp_path / "pvc"))
    (tmp_path / "pvc" / "models").mkdir(parents=True)
    (tmp_path / "pvc" / "other").mkdir()
    (tmp_path / "pvc" / "models" / "elsewhere").symlink_to(tmp_path / "pvc" / "other")
    (tmp_path / "pvc" / "models" / "inside").symlink_to(tmp_path / "pvc" / "models")
    with pytest.raises(StorageError, match="resolves outside"):
        pvc_mount_path("pvc://models/elsewhere/model.pt2")
    with pytest.raises(StorageError, match="expected pvc://CLAIM/path"):
        pvc_mount_path("pvc://./other/model.pt2")
    assert pvc_mount_path("pvc://models/inside/model.pt2") == tmp_path / "pvc" / "models" / "model.pt2"
    assert pvc_mount_path("pvc://models//v1") == tmp_path / "pvc" / "models" / "v1"


def test_manifest_file_that_is_a_symlink_out_of_the_artifact_is_refused(tmp_path):
    import torch

    ref = save_artifact(f"file://{tmp_path / 'model'}", family="digits-mlp", recipe={}, tensors={"w": torch.zeros(2)},
                        extra_files={"notes.txt": b"notes"})
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"notes")  # same bytes, so only the place gives it away
    notes = tmp_path / "model" / "notes.txt"
    notes.unlink()
    notes.symlink_to(secret)
    with pytest.raises(ArtifactError, match="outside the artifact"):
        load_artifact(ref.uri)
    manifest_path = tmp_path / "model" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["."] = manifest["files"].pop("notes.txt")
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="names the directory itself"):
        load_artifact(ref.uri)
