"""s3:// URIs against a real S3-compatible server on loopback: artifacts written and verified, models and
datasets read, clear errors for missing keys and bad credentials."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from slimserve.api.compression_job import CompressionJobSpec, S3Spec
from slimserve.artifacts import ArtifactError, StorageError, load_artifact
from slimserve.artifacts.storage import resolve_uri
from slimserve.compression import compress
from slimserve.models import load_servable
from slimserve.models.digits import digits_data


def _spec(server, model: str, output: str, steps=None, **extra) -> CompressionJobSpec:
    return CompressionJobSpec.model_validate({
        "model": {"uri": model}, "output": {"uri": output}, "s3": {"endpoint": server.endpoint, "region": "us-east-1"},
        "steps": steps or [{"prune": {"method": "unstructured", "amount": 0.5}}],
        "evaluation": {"threads": 1, **extra.pop("evaluation", {})}, **extra,
    })


def test_artifact_written_to_s3_is_verified_and_served(s3_env, monkeypatch):
    server = s3_env
    outcome = compress(_spec(server, "builtin://digits-mlp", f"s3://{server.bucket}/artifacts/mlp"), [])
    keys = {o["Key"] for o in server.client().list_objects_v2(Bucket=server.bucket, Prefix="artifacts/mlp/")["Contents"]}
    assert {"artifacts/mlp/manifest.json", "artifacts/mlp/weights.safetensors", "artifacts/mlp/report.json"} <= keys
    s3 = S3Spec(endpoint=server.endpoint)
    artifact = load_artifact(outcome.artifact.uri, s3=s3)
    assert artifact.digest == outcome.artifact.digest
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)  # how a server pod without a spec finds the store
    served = load_servable(outcome.artifact.uri)
    data = digits_data()
    assert (served.predict({"input": data.x_test})["label"] == data.y_test).mean() > 0.9


def test_tampered_object_in_s3_is_refused(s3_env):
    server = s3_env
    outcome = compress(_spec(server, "builtin://digits-mlp", f"s3://{server.bucket}/artifacts/tampered"), [])
    client = server.client()
    weights = client.get_object(Bucket=server.bucket, Key="artifacts/tampered/weights.safetensors")["Body"].read()
    client.put_object(Bucket=server.bucket, Key="artifacts/tampered/weights.safetensors", Body=weights[:-1] + b"\x01")
    with pytest.raises(ArtifactError, match="does not match the manifest"):
        load_artifact(outcome.artifact.uri, s3=S3Spec(endpoint=server.endpoint))


def test_model_and_dataset_read_from_s3(s3_env, tmp_path):
    from slimserve.models.loading import load_builtin

    server = s3_env
    digits_mlp = load_builtin("builtin://digits-mlp")
    client = server.client()
    program = tmp_path / "mlp.pt2"
    torch.export.save(
        torch.export.export(digits_mlp.model, (torch.zeros(2, 64),), dynamic_shapes=({0: torch.export.Dim("batch")},)), str(program)
    )
    client.upload_file(str(program), server.bucket, "user/mlp.pt2")
    data = digits_data()
    buffer = io.BytesIO()
    np.savez(buffer, x=np.concatenate([data.x_train, data.x_test]), y=np.concatenate([data.y_train, data.y_test]))
    client.put_object(Bucket=server.bucket, Key="data/digits.npz", Body=buffer.getvalue())
    spec = _spec(server, f"s3://{server.bucket}/user/mlp.pt2", f"file://{tmp_path}/out",
                 evaluation={"dataset": {"uri": f"s3://{server.bucket}/data/digits.npz"}, "maxDrop": 0.05})
    outcome = compress(spec, [])
    assert outcome.metrics.baseline.metric > 0.9 and outcome.metrics.size_ratio > 1.2


def test_missing_key_and_bad_credentials_are_clear_errors(s3_env, monkeypatch):
    server = s3_env
    s3 = S3Spec(endpoint=server.endpoint)
    with pytest.raises(StorageError, match="download failed"):
        resolve_uri(f"s3://{server.bucket}/no/such/key.pt2", s3)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-key")
    with pytest.raises(StorageError, match=f"s3://{server.bucket}/artifacts"):
        resolve_uri(f"s3://{server.bucket}/artifacts/mlp", s3)

