"""The BatchInference controller on the real control plane (kwok nodes run no containers).

The pods' side is played by the test: it patches `status.shardProgress[<index>]` as the shard's pod does,
authenticated as the BatchInference's own ServiceAccount, and ends each index's pod through kwok's
slimserve.io/test-outcome annotation ("run" keeps a pod running until the test annotates it "succeed" or
"fail"; see tests/cluster/kwok/kwok.yaml).
"""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes import config as kube_config

from slimserve.api import GROUP, VERSION
from slimserve.controller.builders.compression_job import POD_ANNOTATIONS_ANNOTATION
from slimserve.kube.status import MERGE_PATCH
from tests.cluster.controlplane import OUTCOME_ANNOTATION
from tests.cluster.helpers import apply, condition, exists, get, wait_for

pytestmark = pytest.mark.cluster

DIGEST = "sha256:" + "ab" * 32
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


def batch_inference(name: str, *, outcome: str | None = "run", model: dict | None = None, **spec) -> dict:
    annotations = {POD_ANNOTATIONS_ANNOTATION: json.dumps({OUTCOME_ANNOTATION: outcome})} if outcome else {}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BatchInference",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "model": model or {"uri": "builtin://minilm-l6"},
            "input": {"uri": "s3://datasets/texts/"},
            "output": {"uri": f"s3://results/{name}/"},
            **spec,
        },
    }


def status_of(cp, namespace: str, name: str) -> dict:
    return get(cp, namespace, "batchinference", name).get("status") or {}


def wait_status(cp, namespace: str, name: str, what: str, check, timeout: float = 60) -> dict:
    return wait_for(f"BatchInference {name}: {what}", lambda: (s := status_of(cp, namespace, name)) and check(s) and s,
                    timeout)


def pods_by_index(cp, namespace: str, job: str, count: int) -> dict[int, dict]:
    def running() -> dict[int, dict] | None:
        pods = get(cp, namespace, "pods", "-l", f"batch.kubernetes.io/job-name={job}")["items"]
        live = {int(p["metadata"]["labels"][INDEX_LABEL]): p for p in pods if p["status"].get("phase") == "Running"}
        return live if len(live) == count else None

    return wait_for(f"{count} running pods of {job}", running)


def end_pod(cp, namespace: str, pod: dict, outcome: str) -> None:
    cp.kubectl("annotate", "-n", namespace, "pod", pod["metadata"]["name"], f"{OUTCOME_ANNOTATION}={outcome}",
               "--overwrite")


def shard_reporter(cp, namespace: str, name: str):
    """Patch one shard's entry as its pod does, with the pods' ServiceAccount."""
    kubeconfig = cp.service_account_kubeconfig(namespace, f"{name}-batch")
    api = client.CustomObjectsApi(kube_config.new_client_from_config(config_file=str(kubeconfig)))

    def report(index: int, **entry) -> None:
        body = {"status": {"shardProgress": {str(index): {"generation": 1, **entry}}}}
        api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "batchinferences", name, body,
                                                  _content_type=MERGE_PATCH)

    return report, api


def test_indexed_job_and_status_summed_from_the_shards(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, batch_inference("embed", shards=3, parallelism=3, batchSize=32, backoffLimitPerIndex=2,
                                         activeDeadlineSeconds=600, s3={"credentialsSecret": {"name": "minio"}}))
    job = wait_for("the Job", lambda: exists(cp, namespace, "job", "embed-batch-g1") and get(cp, namespace, "job",
                                                                                               "embed-batch-g1"))
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("BatchInference", "embed", True)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert (spec["backoffLimitPerIndex"], spec["maxFailedIndexes"], spec["activeDeadlineSeconds"]) == (2, 0, 600)
    pod_spec = spec["template"]["spec"]
    assert pod_spec["serviceAccountName"] == "embed-batch"
    (container,) = pod_spec["containers"]
    assert container["args"] == ["batch"] and container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SLIMSERVE_SHARDS"] == "3" and env["SLIMSERVE_STATUS_TARGET"] == f"{namespace}/embed"
    assert json.loads(env["SLIMSERVE_BATCH_SPEC"])["model"] == {"uri": "builtin://minilm-l6"}
    role = get(cp, namespace, "role", "embed-batch")
    assert role["rules"] == [{"apiGroups": [GROUP], "resources": ["batchinferences/status"],
                              "resourceNames": ["embed"], "verbs": ["get", "patch"]}]

    pods = pods_by_index(cp, namespace, "embed-batch-g1", 3)
    report, pod_api = shard_reporter(cp, namespace, "embed")
    for index in range(3):
        report(index, state="Running", recordsDone=10 * index, recordsTotal=100)
    running = wait_status(cp, namespace, "embed", "30 records counted", lambda s: s.get("recordsDone") == 30)
    assert running["phase"] == "Running" and running["progress"] == "30/300" and running["recordsTotal"] == 300
    assert running["shards"] == {"total": 3, "done": 0, "failed": 0, "running": 3}
    assert condition(running, "Reconciling")["status"] == "True"
    # The pods' account writes its own BatchInference's status and no other's.
    with pytest.raises(client.ApiException) as refused:
        pod_api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "batchinferences", "other",
                                                      {"status": {}}, _content_type=MERGE_PATCH)
    assert refused.value.status == 403

    manifest = {"uri": "s3://results/embed/_manifest.json", "digest": DIGEST}
    for index in range(3):
        part = {"uri": f"s3://results/embed/part-{index:05d}.jsonl", "digest": DIGEST, "records": 100}
        report(index, state="Succeeded", recordsDone=100, part=part, **({"manifest": manifest} if index == 2 else {}))
        end_pod(cp, namespace, pods[index], "succeed")
    done = wait_status(cp, namespace, "embed", "Succeeded", lambda s: s.get("phase") == "Succeeded")
    assert done["output"] == {"manifestUri": manifest["uri"], "manifestDigest": DIGEST}
    assert done["shards"] == {"total": 3, "done": 3, "failed": 0, "running": 0} and done["progress"] == "300/300"
    assert done["recordsPerSecond"] > 0 and done["completionTime"] and done["startTime"]
    assert condition(done, "Succeeded")["status"] == "True"
    assert (condition(done, "Reconciling")["status"], condition(done, "Stalled")["status"]) == ("False", "False")
    table = cp.kubectl("get", "binf", "-n", namespace).stdout
    assert all(column in table.splitlines()[0] for column in ("PROGRESS", "RECORDS/S", "SUCCEEDED", "AGE"))
    assert "300/300" in table
    assert "batchinference.slimserve.io/embed" in cp.kubectl("get", "slimserve", "-n", namespace, "-o", "name").stdout


def test_a_failed_index_is_surfaced_with_its_pods_message(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, batch_inference("flaky", shards=2, parallelism=2, backoffLimitPerIndex=0, maxFailedShards=1))
    pods = pods_by_index(cp, namespace, "flaky-batch-g1", 2)
    end_pod(cp, namespace, pods[1], "fail")  # a crash: the pod reports nothing itself
    end_pod(cp, namespace, pods[0], "succeed")
    failed = wait_status(cp, namespace, "flaky", "Failed", lambda s: s.get("phase") == "Failed", timeout=90)
    succeeded = condition(failed, "Succeeded")
    assert succeeded["status"] == "False" and succeeded["reason"] == "ShardsFailed"
    assert "shard 1:" in succeeded["message"] and "failed by slimserve.io/test-outcome" in succeeded["message"]
    entry = failed["shardProgress"]["1"]
    assert entry["state"] == "Failed" and "exit code 1" in entry["message"]
    assert failed["shards"]["failed"] == 1 and failed["shards"]["done"] == 1
    assert condition(failed, "Stalled")["status"] == "True"


def test_spec_change_starts_a_new_generation_and_deletion_takes_the_children(control_plane, operator, namespace):
    cp = control_plane
    manifest = batch_inference("evolving", shards=1, parallelism=1)
    apply(cp, namespace, manifest)
    pods_by_index(cp, namespace, "evolving-batch-g1", 1)
    report, _ = shard_reporter(cp, namespace, "evolving")
    report(0, state="Running", recordsDone=5)
    wait_status(cp, namespace, "evolving", "5 records", lambda s: s.get("recordsDone") == 5)

    manifest["spec"]["batchSize"] = 16
    apply(cp, namespace, manifest)
    wait_for("the old Job gone", lambda: not exists(cp, namespace, "job", "evolving-batch-g1"))
    status = wait_status(cp, namespace, "evolving", "generation 2 running",
                         lambda s: s.get("observedGeneration") == 2 and s.get("phase") == "Running")
    assert status["jobName"] == "evolving-batch-g2" and "shardProgress" not in status and "recordsDone" in status
    assert status["recordsDone"] == 0

    cp.kubectl("delete", "-n", namespace, "batchinference/evolving", "--wait=true", "--timeout=60s")
    # The garbage collector learns of a new CRD at its next discovery sync (every 30 s): early in a session, waits.
    wait_for("the Job gone", lambda: not exists(cp, namespace, "job", "evolving-batch-g2"), timeout=90)
    for kind in ("serviceaccount", "role", "rolebinding"):
        wait_for(f"the {kind} gone", lambda kind=kind: not exists(cp, namespace, kind, "evolving-batch"))


def test_a_name_held_by_another_object_is_a_condition_not_a_takeover(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "taken-batch"}})
    apply(cp, namespace, batch_inference("taken"))
    status = wait_status(cp, namespace, "taken", "ChildConflict",
                         lambda s: condition(s, "Succeeded").get("reason") == "ChildConflict")
    assert "taken-batch" in condition(status, "Succeeded")["message"]
    assert condition(status, "Stalled")["status"] == "True"
    assert not exists(cp, namespace, "job", "taken-batch-g1")
    assert "ownerReferences" not in get(cp, namespace, "serviceaccount", "taken-batch")["metadata"]


def test_a_compression_jobs_artifact_is_waited_for_and_its_digest_pinned(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, batch_inference("chained", model={"compressionJobRef": {"name": "minilm-slim"}}))
    missing = wait_status(cp, namespace, "chained", "CompressionJobNotFound",
                          lambda s: condition(s, "Succeeded").get("reason") == "CompressionJobNotFound")
    assert missing["phase"] == "Pending" and condition(missing, "Stalled")["status"] == "True"

    # The CompressionJob exists but has not succeeded: waiting, in progress, no Job.
    compression = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CompressionJob", "metadata": {"name": "minilm-slim"},
                   "spec": {"model": {"uri": "builtin://minilm-l6"}, "nodePool": "tpu",
                            "steps": [{"quantize": {"method": "int8-dynamic"}}], "output": {"uri": "s3://m/x"}}}
    apply(cp, namespace, compression)
    waiting = wait_status(cp, namespace, "chained", "WaitingForCompression",
                          lambda s: condition(s, "Succeeded").get("reason") in ("WaitingForCompression", "CompressionFailed"))
    assert not exists(cp, namespace, "job", "chained-batch-g1")
    assert waiting["phase"] == "Pending"

    # It succeeds (as its pod would report): the BatchInference runs that artifact, digest pinned.
    artifact = {"uri": "s3://models/minilm-slim", "digest": DIGEST, "sizeBytes": 1, "format": "slimserve/v1"}
    succeeded = {"type": "Succeeded", "status": "True", "reason": "Completed", "message": "done",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}
    cp.kubectl("patch", "-n", namespace, "compressionjob/minilm-slim", "--subresource=status", "--type=merge", "-p",
               json.dumps({"status": {"phase": "Succeeded", "artifact": artifact, "conditions": [succeeded]}}))
    job = wait_for("the Job", lambda: exists(cp, namespace, "job", "chained-batch-g1")
                   and get(cp, namespace, "job", "chained-batch-g1"), timeout=90)
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SLIMSERVE_ARTIFACT_DIGEST"] == DIGEST
    assert json.loads(env["SLIMSERVE_BATCH_SPEC"])["model"] == {"uri": artifact["uri"]}
    assert status_of(cp, namespace, "chained")["modelDigest"] == DIGEST
