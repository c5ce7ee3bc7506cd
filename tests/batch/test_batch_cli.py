"""`slimserve batch --spec` and `slimserve run -f` with BatchInferences: the shipped examples."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slimserve.api.workload import PVC_ROOT
from slimserve.batch.output import read_records
from slimserve.cli.main import main
from slimserve.local.plan import plan_from_file

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


@pytest.mark.slow
def test_the_minilm_example_runs_here_in_two_shard_processes_then_the_manifest(tmp_path):
    datasets = tmp_path / "pvc" / "datasets"
    datasets.mkdir(parents=True)
    shutil.copy(EXAMPLES / "data" / "sentences.jsonl", datasets)
    done = subprocess.run(
        [sys.executable, "-m", "slimserve.cli.main", "batch", "--spec", str(EXAMPLES / "batch-minilm.yaml"),
         "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("BatchInference sentence-embeddings: 64 records in 2 shards") and "records/s" in summary
    records = list(read_records(datasets / "embeddings"))
    assert [record["id"] for record in records] == [f"s{i:03d}" for i in range(64)]
    assert {len(record["embedding"]) for record in records} == {384}
    manifest = json.loads((datasets / "embeddings" / "_manifest.json").read_text())
    assert [part["records"] for part in manifest["parts"]] == [32, 32]


def test_a_batch_chained_after_a_compression_job_scores_with_its_artifact():
    plan = plan_from_file(EXAMPLES / "batch-digits-chain.yaml")
    assert [job.metadata["name"] for job in plan.jobs] == ["digits-int8"] and plan.service is None
    ((name, spec),) = plan.batches
    assert name == "digits-labels" and spec.model.uri == "pvc://models/digits-int8"


@pytest.fixture
def own_pvc_root(monkeypatch):
    """In process, `slimserve batch` and `run` set the claims' root for their shards and unset it on return."""
    monkeypatch.delenv(PVC_ROOT.name, raising=False)
    yield
    assert PVC_ROOT.name not in os.environ  # later tests (and their subprocesses) see no leftover root


def test_a_file_without_a_batch_inference_is_refused(capsys, own_pvc_root):
    assert main(["batch", "--spec", str(EXAMPLES / "quickstart.yaml")]) == 2
    assert "no BatchInference in the file (found: CompressionJob, ModelService)" in capsys.readouterr().err


def test_slimserve_run_scores_a_files_batch_inference(tmp_path, capfd, own_pvc_root):
    datasets = tmp_path / "pvc" / "datasets"
    datasets.mkdir(parents=True)
    shutil.copy(EXAMPLES / "data" / "digits.npy", datasets)
    manifest = tmp_path / "batch.yaml"
    manifest.write_text(json.dumps({
        "apiVersion": "slimserve.io/v1alpha1", "kind": "BatchInference", "metadata": {"name": "labels"},
        "spec": {"model": {"uri": "builtin://digits-cnn"}, "input": {"uri": "pvc://datasets/digits.npy"},
                 "output": {"uri": "pvc://datasets/labels/"}, "shards": 2, "batchSize": 50},
    }))
    assert main(["run", "-f", str(manifest), "--workdir", str(tmp_path), "--once"]) == 0
    assert "100 records in 2 shards" in capfd.readouterr().out
    assert [record["id"] for record in read_records(datasets / "labels")] == list(range(100))
