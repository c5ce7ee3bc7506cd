"""Storage URIs follow one set of rules (slimserve.api.uri): the operator refuses a CompressionJob for what
the pods' storage would refuse, and lets through what it would take."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from slimserve.api import CompressionJobSpec
from slimserve.api.common import MODEL_URI_PATTERN
from slimserve.api.uri import InvalidUri, StorageUri, parse_uri, pvc_claim
from slimserve.artifacts.errors import StorageError
from slimserve.artifacts.storage import local_path, parse_storage_uri, pvc_mount_path
from slimserve.controller.builders.compression_job import InvalidSpec, check_runnable
from slimserve.controller.config import OperatorConfig

VALID = [
    ("file:///models/digits", StorageUri("file:///models/digits", "file", "", "models/digits")),
    ("file://relative/dir", StorageUri("file://relative/dir", "file", "relative", "dir")),
    ("pvc://models/digits/v1", StorageUri("pvc://models/digits/v1", "pvc", "models", "digits/v1")),
    ("pvc://models", StorageUri("pvc://models", "pvc", "models", "")),  # the claim's root
    ("pvc://my.claim-2//v1", StorageUri("pvc://my.claim-2//v1", "pvc", "my.claim-2", "/v1")),  # empty segments
    ("s3://bucket/prefix/key", StorageUri("s3://bucket/prefix/key", "s3", "bucket", "prefix/key")),
    ("s3://bucket", StorageUri("s3://bucket", "s3", "bucket", "")),
    ("s3://bucket/a/../b", StorageUri("s3://bucket/a/../b", "s3", "bucket", "a/../b")),  # keys are free-form
]

INVALID = [
    ("models/digits", "is not a URI"),
    ("pvc://", "is not a URI"),
    ("://models", "is not a URI"),
    ("pvc:///models/x", "'pvc:///models/x' names no claim"),
    ("pvc://./other", "'.' is not a PersistentVolumeClaim name"),
    ("pvc://../other", "'..' is not a PersistentVolumeClaim name"),
    ("pvc://Models_1/x", "'Models_1' is not a PersistentVolumeClaim name"),
    ("pvc://-models/x", "'-models' is not a PersistentVolumeClaim name"),
    (f"pvc://{'a' * 254}/x", f"'{'a' * 254}' is not a PersistentVolumeClaim name"),
    ("pvc://out/../etc", "'pvc://out/../etc' must not contain '..'"),
    ("pvc://out/a/..", "'pvc://out/a/..' must not contain '..'"),
    ("s3:///prefix", "'s3:///prefix' names no bucket"),
]


@pytest.mark.parametrize(("uri", "parts"), VALID, ids=[uri for uri, _ in VALID])
def test_valid_uris_and_their_parts(uri, parts):
    assert parse_uri(uri) == parts
    assert parse_storage_uri(uri) == parts


@pytest.mark.parametrize(("uri", "message"), INVALID, ids=[uri[:40] for uri, _ in INVALID])
def test_invalid_uris_are_refused_alike_by_the_parser_and_the_storage(uri, message):
    with pytest.raises(InvalidUri, match=_literal(message)):
        parse_uri(uri)
    with pytest.raises(StorageError, match=_literal(message)):
        parse_storage_uri(uri)


def test_schemes_are_one_list():
    assert parse_uri("builtin://digits-cnn").authority == "digits-cnn"
    with pytest.raises(InvalidUri, match="unsupported scheme 'builtin'; use one of file, pvc, s3"):
        parse_uri("builtin://digits-cnn", ("file", "pvc", "s3"))
    with pytest.raises(StorageError, match="unsupported scheme 'http'"):
        parse_storage_uri("http://example.com/model")


# The operator checks a CompressionJob's URIs before its pod starts, by the same rules.
CONFIG = OperatorConfig()


def _spec(model_uri: str) -> CompressionJobSpec:
    return CompressionJobSpec.from_json({
        "model": {"uri": model_uri},
        "steps": [{"quantize": {"method": "int8-dynamic"}}],
        "output": {"uri": "s3://artifacts/out"},
    })


@pytest.mark.parametrize("uri", [uri for uri, _ in VALID if not uri.startswith("file://relative")])
def test_the_operator_takes_what_the_storage_takes(uri):
    check_runnable(_spec(uri), CONFIG)


@pytest.mark.parametrize(("uri", "message"), [(u, m) for u, m in INVALID if re.match(MODEL_URI_PATTERN, u)],
                         ids=lambda value: str(value)[:40])  # what the CRD's pattern lets through
def test_the_operator_refuses_what_the_storage_refuses(uri, message):
    with pytest.raises(InvalidSpec, match=_literal(f"spec.model.uri: {message}")):
        check_runnable(_spec(uri), CONFIG)


def test_a_pvc_claim_is_read_one_way(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMSERVE_PVC_ROOT", str(tmp_path))
    assert pvc_claim("pvc://models/digits") == "models"
    assert pvc_claim("s3://models/digits") is None and pvc_claim("file:///models") is None
    assert pvc_claim("pvc:///digits") is None and pvc_claim("pvc://") is None
    assert pvc_mount_path("pvc://models/digits") == tmp_path / "models" / "digits"
    assert local_path("pvc://models") == tmp_path / "models"
    with pytest.raises(StorageError, match="'Models' is not a PersistentVolumeClaim name"):
        local_path("pvc://Models/digits")  # `slimserve run` takes what a cluster takes, no more


def test_file_uris_map_to_local_paths():
    assert local_path("file:///models/digits") == Path("/models/digits")
    assert local_path("file://relative/dir") == Path("relative/dir")
    with pytest.raises(StorageError, match="not a local URI"):
        local_path("s3://bucket/key")


def _literal(text: str) -> str:
    return re.escape(text)
