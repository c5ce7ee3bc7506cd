"""End to end: the pod the operator builds for a BatchInference, run as real processes (one per shard, as the
Indexed Job runs them), over real datasets; a shard killed mid-way resumes and the finished parts are skipped."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from slimserve.api.batch_inference import BatchInferenceSpec
from slimserve.batch.output import read_records
from slimserve.models import load_servable
from tests.batch.conftest import DIGITS, pod_container, start_pod, write_jsonl

pytestmark = pytest.mark.slow


def test_three_digits_shards_as_pods_score_what_one_process_scores(tmp_path, digits):
    claims = tmp_path / "mnt" / "pvc"
    (claims / "data").mkdir(parents=True)
    np.save(claims / "data" / "digits.npy", digits)
    spec = BatchInferenceSpec.model_validate({
        "model": {"uri": "builtin://digits-cnn"}, "input": {"uri": "pvc://data/digits.npy"},
        "output": {"uri": "pvc://results/digits/", "format": "parquet"}, "shards": 3, "parallelism": 3, "batchSize": 16,
    })
    container = pod_container(spec)
    pods = [start_pod(container, index, tmp_path) for index in range(3)]
    for pod in pods:
        pod.finish()

    records = list(read_records(claims / "results" / "digits"))
    expected = load_servable("builtin://digits-cnn").predict({"input": digits})
    assert [record["id"] for record in records] == list(range(DIGITS))  # each record's row, in input order
    np.testing.assert_allclose(np.array([record["logits"] for record in records]), expected["logits"], atol=1e-5)
    assert [record["label"] for record in records] == expected["label"].tolist()
    manifest = json.loads((claims / "results" / "digits" / "_manifest.json").read_text())
    assert [part["records"] for part in manifest["parts"]] == [30, 30, 30] and manifest["records"] == DIGITS
    assert manifest["parts"][1]["name"] == "part-00001.parquet"


def test_a_shard_killed_mid_way_resumes_and_the_finished_parts_are_skipped(tmp_path, sentences):
    claims = tmp_path / "mnt" / "pvc"
    write_jsonl(claims / "data" / "texts.jsonl", [{"key": f"t{i}", "text": text} for i, text in enumerate(sentences)])
    spec = BatchInferenceSpec.model_validate({
        "model": {"uri": "builtin://minilm-l6"}, "input": {"uri": "pvc://data/texts.jsonl", "idField": "key"},
        "output": {"uri": "pvc://results/texts/"}, "shards": 3, "parallelism": 3, "batchSize": 2,
    })
    container = pod_container(spec)
    results = claims / "results" / "texts"
    pods = [start_pod(container, index, tmp_path) for index in range(3)]
    pods[1].wait_for_event("progress")  # its first batch is scored: kill it there
    pods[1].process.send_signal(signal.SIGKILL)
    pods[1].process.wait()
    for pod in (pods[0], pods[2]):
        pod.finish()
    assert not (results / "part-00001.jsonl").exists() and not (results / "_manifest.json").exists()
    assert list(results.glob(".part-00001.jsonl.*.tmp")), "shard 1 finished before it was killed"
    finished = {name: (results / name).read_bytes() for name in ("part-00000.jsonl", "part-00002.jsonl")}

    rerun = [start_pod(container, index, tmp_path) for index in range(3)]
    for pod in rerun:
        pod.finish()
    assert [pod.events()[0]["event"] for pod in rerun] == ["skipped", "started", "skipped"]
    assert {name: (results / name).read_bytes() for name in finished} == finished
    assert not list(results.glob(".*.tmp"))

    records = list(read_records(results))
    assert [record["id"] for record in records] == [f"t{i}" for i in range(len(sentences))]
    texts = np.array([text.encode() for text in sentences], dtype=object)
    expected = load_servable("builtin://minilm-l6").predict({"text": texts})["embedding"]
    np.testing.assert_allclose(np.array([record["embedding"] for record in records]), expected, atol=1e-4)
