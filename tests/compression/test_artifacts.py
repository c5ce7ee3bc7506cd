"""Artifacts: round trip, digests, refusal of tampered / truncated / foreign files, atomic writes, storage URIs."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from slimserve.artifacts import ArtifactError, StorageError, load_artifact, save_artifact
from slimserve.artifacts.sparse import pack_sparse, unpack_sparse
from slimserve.artifacts.storage import pvc_mount_path, resolve_uri


def _save(path, tensors=None, **extra):
    tensors = tensors if tensors is not None else {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(3)}
    return save_artifact(f"file://{path}", family="digits-mlp", recipe={"hidden": [4]}, tensors=tensors, **extra)


def test_round_trip_and_digest_of_the_manifest(tmp_path):
    target = tmp_path / "model"
    ref = _save(target, extra_files={"notes.txt": b"hello"}, metrics={"sizeRatio": 2.0})
    raw = (target / "manifest.json").read_bytes()
    assert ref.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert ref.size_bytes == sum(p.stat().st_size for p in target.iterdir())
    artifact = load_artifact(ref.uri, expected_digest=ref.digest)
    assert artifact.digest == ref.digest and artifact.size_bytes == ref.size_bytes
    assert torch.equal(artifact.tensors()["w"], torch.arange(12, dtype=torch.float32).reshape(3, 4))
    manifest = json.loads(raw)
    assert manifest["format"] == "slimserve/v1"
    assert set(manifest["files"]) == {"weights.safetensors", "notes.txt"}
    assert manifest["metrics"] == {"sizeRatio": 2.0}


def test_tampered_file_is_refused(tmp_path):
    ref = _save(tmp_path / "model")
    weights = tmp_path / "model" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weights.safetensors sha256 .* does not match") as info:
        load_artifact(ref.uri)
    assert info.value.reason == "DigestMismatch"


def test_truncated_file_is_refused(tmp_path):
    ref = _save(tmp_path / "model")
    weights = tmp_path / "model" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="truncated or corrupt") as info:
        load_artifact(ref.uri)
    assert info.value.reason == "CorruptArtifact"


def test_wrong_expected_digest_missing_file_and_bad_manifest_are_refused(tmp_path):
    ref = _save(tmp_path / "model", extra_files={"notes.txt": b"x"})
    with pytest.raises(ArtifactError, match="digest mismatch"):
        load_artifact(ref.uri, expected_digest="sha256:" + "0" * 64)
    (tmp_path / "model" / "notes.txt").unlink()
    with pytest.raises(ArtifactError, match="notes.txt is missing"):
        load_artifact(ref.uri)
    (tmp_path / "model" / "manifest.json").write_text('{"format": "slimserve/v9"}')
    with pytest.raises(ArtifactError, match="not a valid manifest"):
        load_artifact(ref.uri)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_artifact(f"file://{tmp_path}")


def test_manifest_naming_a_file_outside_is_refused(tmp_path):
    ref = _save(tmp_path / "model")
    manifest_path = tmp_path / "model" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../escape"] = {"sha256": "0" * 64, "size": 1}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="outside the artifact"):
        load_artifact(ref.uri)


def test_failed_write_leaves_nothing_and_keeps_the_old_artifact(tmp_path):
    target = tmp_path / "model"
    first = _save(target)
    with pytest.raises(ValueError, match="reserved"):
        _save(target, tensors={"w": torch.zeros(2)}, extra_files={"manifest.json": b"{}"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no partial directory left behind
    assert load_artifact(first.uri).digest == first.digest
    second = _save(target, tensors={"w": torch.zeros(2)})
    assert load_artifact(second.uri).digest == second.digest != first.digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_never_overwrites_a_directory_that_is_not_an_artifact(tmp_path):
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    with pytest.raises(StorageError, match="not a SlimServe artifact; refusing"):
        _save(precious)
    assert (precious / "thesis.txt").read_text() == "years of work"


def test_sparse_tensors_are_packed_smaller_and_round_trip(tmp_path):
    generator = torch.Generator().manual_seed(0)
    dense = torch.randn(256, 256, generator=generator)
    sparse = dense * (torch.rand(256, 256, generator=generator) > 0.7)
    stored, encoding = pack_sparse({"dense": dense, "sparse": sparse})
    assert "dense" in stored and set(encoding) == {"sparse"}
    assert torch.equal(unpack_sparse(stored, encoding)["sparse"], sparse)
    small = _save(tmp_path / "sparse", tensors={"w": sparse})
    large = _save(tmp_path / "dense", tensors={"w": dense})
    assert small.size_bytes < 0.45 * large.size_bytes
    assert torch.equal(load_artifact(small.uri).tensors()["w"], sparse)


def test_pvc_uris_map_under_the_mount_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMSERVE_PVC_ROOT", str(tmp_path))
    assert pvc_mount_path("pvc://models/minilm/v1") == tmp_path / "models" / "minilm" / "v1"
    ref = _save(tmp_path / "models" / "slim")
    assert load_artifact("pvc://models/slim").digest == ref.digest
    with pytest.raises(StorageError, match="without '..'"):
        pvc_mount_path("pvc://models/../etc")


def test_unsupported_and_missing_uris_give_clear_errors(tmp_path):
    with pytest.raises(StorageError, match="unsupported scheme 'gs'"):
        resolve_uri("gs://bucket/model")
    with pytest.raises(StorageError, match="not a URI"):
        resolve_uri("/just/a/path")
    with pytest.raises(StorageError, match="no such file or directory"):
        resolve_uri(f"file://{tmp_path}/missing")
