"""BatchInference manifests and status derivation, as pure functions (the cluster tests run them for real)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from slimserve.api import BatchInferenceSpec
from slimserve.controller.batch_inference_status import parse_indexes, pending_status, status_from_job
from slimserve.controller.builders.batch_inference import (
    InvalidSpec,
    build_access,
    build_job,
    check_runnable,
    job_name,
)
from slimserve.controller.config import OperatorConfig

CONFIG = OperatorConfig.model_validate({"nodePools": {"cpu": {}, "gpu": {"gpuResourceName": "nvidia.com/gpu"}}})
NOW = datetime(2026, 1, 1, 0, 0, 10, tzinfo=timezone.utc)


def spec(**fields) -> BatchInferenceSpec:
    return BatchInferenceSpec.from_json({
        "model": {"uri": "pvc://models/minilm"}, "input": {"uri": "pvc://data/texts.jsonl"},
        "output": {"uri": "pvc://results/run/"}, **fields,
    })


def test_unset_shards_follow_parallelism_and_the_pod_is_told_the_count():
    job = build_job(name="embed", namespace="ml", generation=3, spec=spec(parallelism=4), config=CONFIG,
                    model_uri="s3://models/minilm", model_digest="sha256:ab")
    assert job["metadata"]["name"] == job_name("embed", 3) == "embed-batch-g3"
    assert (job["spec"]["completions"], job["spec"]["parallelism"], job["spec"]["completionMode"]) == (4, 4, "Indexed")
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SLIMSERVE_SHARDS"] == "4" and env["SLIMSERVE_ARTIFACT_DIGEST"] == "sha256:ab"
    pinned = json.loads(env["SLIMSERVE_BATCH_SPEC"])
    assert pinned["model"] == {"uri": "s3://models/minilm"} and pinned["shards"] == 4
    assert "activeDeadlineSeconds" not in job["spec"]


def test_more_parallel_pods_than_shards_run_one_per_shard_and_claims_mount_by_use():
    job = build_job(name="embed", namespace="ml", generation=1, spec=spec(shards=2, parallelism=8, maxFailedShards=1),
                    config=CONFIG, model_uri="pvc://models/minilm")
    assert (job["spec"]["parallelism"], job["spec"]["maxFailedIndexes"]) == (2, 1)
    mounts = {m["mountPath"]: m["readOnly"] for m in job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
              if m["mountPath"].startswith("/mnt/pvc")}
    assert mounts == {"/mnt/pvc/data": True, "/mnt/pvc/models": True, "/mnt/pvc/results": False}


def test_a_gpu_pool_gets_its_gpu_and_the_gpu_image():
    job = build_job(name="embed", namespace="ml", generation=1, spec=spec(nodePool="gpu"), config=CONFIG,
                    model_uri="pvc://models/minilm")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == CONFIG.images.compressor_gpu.reference
    assert {"name": "SLIMSERVE_DEVICE", "value": "cuda"} in container["env"]


def test_access_is_the_status_of_this_one_resource():
    account, role, binding = build_access(name="embed", namespace="ml")
    assert account["metadata"]["name"] == "embed-batch" and account["automountServiceAccountToken"] is False
    assert role["rules"] == [{"apiGroups": ["slimserve.io"], "resources": ["batchinferences/status"],
                              "resourceNames": ["embed"], "verbs": ["get", "patch"]}]
    assert binding["subjects"][0]["name"] == "embed-batch"


@pytest.mark.parametrize(("fields", "problem"), [
    ({"nodePool": "tpu"}, "spec.nodePool: unknown node pool 'tpu'"),
    ({"output": {"uri": "file:///results/"}}, "spec.output.uri: file:// is inside each pod"),
    ({"input": {"uri": "pvc://data/../etc/x.jsonl"}}, "spec.input.uri:"),
])
def test_specs_the_operator_cannot_run_name_the_field(fields, problem):
    with pytest.raises(InvalidSpec, match=problem.replace("(", r"\(")):
        check_runnable(spec(**fields), CONFIG)


def test_job_index_lists_are_read_as_kubernetes_writes_them():
    assert parse_indexes("0-2,5,7-8") == [0, 1, 2, 5, 7, 8] and parse_indexes(None) == []


def _running(reports: dict) -> dict:
    status = pending_status(None, generation=1, job_name="embed-batch-g1", shards=2, model_uri="m", model_digest=None)
    status = {k: v for k, v in status.items() if v is not None}
    return {"metadata": {"generation": 1}, "status": {**status, "shardProgress": reports}}


def test_reports_of_an_older_generation_are_not_counted_and_a_silent_failed_index_gets_its_pods_message():
    job = {"metadata": {"name": "embed-batch-g1"}, "spec": {"completions": 2},
           "status": {"startTime": "2026-01-01T00:00:00Z", "active": 1, "failedIndexes": "1",
                      "completedIndexes": ""}}
    reports = {"0": {"generation": 1, "state": "Running", "recordsDone": 50, "recordsTotal": 100},
               "1": {"generation": 0, "state": "Succeeded", "recordsDone": 999, "recordsTotal": 999}}
    pod = {"metadata": {"name": "embed-batch-g1-1-x"},
           "status": {"containerStatuses": [{"state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}}
    patch = status_from_job(_running(reports), job, generation=1, failed_pods=lambda: {1: pod}, now=NOW)
    assert patch["recordsDone"] == 50 and patch["progress"] == "50/?" and patch["recordsPerSecond"] == 5.0
    assert patch["shards"] == {"total": 2, "done": 0, "failed": 1, "running": 1}
    assert patch["shardProgress"] == {"1": {"generation": 1, "state": "Failed", "recordsDone": 0,
                                            "message": "pod embed-batch-g1-1-x: OOMKilled, exit code 137"}}
