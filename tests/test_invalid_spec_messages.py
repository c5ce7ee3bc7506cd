"""One invalid spec, one message: `slimserve run`, `slimserve compress` and the operator's status say the same."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slimserve.controller import compression_job_status, model_service_reconcile, model_service_status
from slimserve.controller.builders import compression_job as job_builder

JOB_SPEC = {
    "model": {"uri": "builtin://digits-mlp"},
    "steps": [{"prune": {"amount": 1.5, "finetuneEpoch": 1}}],
    "output": {"uri": "file:///tmp/never-written"},
}
JOB_MESSAGE = "spec.steps[0].prune.amount: Input should be less than 1; spec.steps[0].prune.finetuneEpoch: unknown field"
SERVICE_SPEC = {"model": {"uri": "builtin://digits-mlp"}, "autoscaling": {"minReplicas": 5, "maxReplicas": 2},
                "batching": {"maxBatchSize": "many"}}
SERVICE_MESSAGE = (
    "spec.autoscaling.minReplicas must not exceed maxReplicas; "
    "spec.batching.maxBatchSize: Input should be a valid integer, unable to parse string as an integer"
)


def manifest(kind: str, spec: dict) -> dict:
    return {"apiVersion": "slimserve.io/v1alpha1", "kind": kind, "metadata": {"name": "bad"}, "spec": spec}


def slimserve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLIMSERVE_TERMINATION_LOG": str(tmp_path / "termination-log")}
    env.pop("SLIMSERVE_JOB_SPEC", None)
    return subprocess.run([sys.executable, "-m", "slimserve.cli.main", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def run_error(tmp_path: Path, kind: str, spec: dict) -> str:
    """The message `slimserve run -f` prints for a file holding this one resource."""
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(manifest(kind, spec)))
    done = slimserve(tmp_path, "run", "-f", str(path), "--once", "--workdir", str(tmp_path / "work"))
    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("slimserve run:")]
    prefix = f"slimserve run: invalid manifest {path}#0 ({kind} bad): "
    assert line.startswith(prefix), line
    return line.removeprefix(prefix)


def compress_error(tmp_path: Path, spec_file: dict) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec_file))
    done = slimserve(tmp_path, "compress", "--progress", "json", "--spec", str(path))
    assert done.returncode == 2, done.stderr
    prefix = "slimserve compress: InvalidSpec: "
    assert done.stderr.startswith(prefix) and done.stderr.count("\n") == 1, done.stderr
    assert (tmp_path / "termination-log").read_text() == f"InvalidSpec: {done.stderr.removeprefix(prefix)}"
    return done.stderr.removeprefix(prefix).strip()


def operator_job_status_message(spec: dict) -> str:
    with pytest.raises(job_builder.InvalidSpec) as caught:
        job_builder.parse_compression_job_spec(spec)
    status = compression_job_status.invalid_status(None, generation=3, message=str(caught.value))
    (succeeded,) = [c for c in status["conditions"] if c["type"] == "Succeeded"]
    assert (succeeded["status"], succeeded["reason"]) == ("False", "InvalidSpec")
    return succeeded["message"]


def operator_service_status_message(spec: dict) -> str:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        model_service_reconcile.parse_spec({"spec": spec})
    status = model_service_status.invalid_status(None, 3, "InvalidSpec", model_service_reconcile.spec_error(caught.value))
    (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    return ready["message"]


@pytest.mark.slow
def test_an_invalid_compression_job_reads_the_same_everywhere(tmp_path: Path):
    assert operator_job_status_message(JOB_SPEC) == JOB_MESSAGE
    assert run_error(tmp_path, "CompressionJob", JOB_SPEC) == JOB_MESSAGE
    assert compress_error(tmp_path, manifest("CompressionJob", JOB_SPEC)) == JOB_MESSAGE
    assert compress_error(tmp_path, JOB_SPEC) == JOB_MESSAGE  # the spec alone, as the compression pod gets it


@pytest.mark.slow
def test_an_invalid_model_service_reads_the_same_in_the_operator_and_locally(tmp_path: Path):
    assert operator_service_status_message(SERVICE_SPEC) == SERVICE_MESSAGE
    assert run_error(tmp_path, "ModelService", SERVICE_SPEC) == SERVICE_MESSAGE
