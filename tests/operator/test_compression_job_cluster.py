"""The CompressionJob controller and its pod-side status sink on the real control plane (kwok nodes).

kwok runs no containers: a Job's pod becomes Running and then completes, unless its template carries the
annotation slimserve.io/test-outcome ("run" keeps it running, "fail" fails it). The tests ask for it through
the CompressionJob's `slimserve.io/pod-annotations` annotation, which the operator copies onto the pod; a
test may also annotate a running pod to end it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes import config as kube_config

from slimserve.artifacts.cache import cache_root
from slimserve.compression.status_sink import KubernetesStatusSink
from slimserve.kube import status as status_update
from slimserve.controller.builders.compression_job import POD_ANNOTATIONS_ANNOTATION
from tests.cluster.controlplane import OUTCOME_ANNOTATION
from tests.cluster.helpers import apply, condition, events_of, exists, get, last_handled, wait_for

pytestmark = pytest.mark.cluster

CPU_NODES = {"kwok-cpu-0", "kwok-cpu-1", "kwok-cpu-2"}
GPU_NODES = {"kwok-gpu-0", "kwok-gpu-1"}
FAST_DIGITS_STEPS = [{"prune": {"amount": 0.5, "finetuneEpochs": 1}}, {"quantize": {"method": "int8-static"}}]
# The real compressor's run: the reporting path is under test, not the quantizer (compiling the quantized model
# for its measurements alone takes ~20 s of CPU), so pruning with one recovery epoch only.
E2E_STEPS = [{"prune": {"amount": 0.5, "finetuneEpochs": 1}}]


# ---- helpers ------------------------------------------------------------------------------------------


def compression_job(
    name: str,
    *,
    outcome: str | None = None,
    model: str = "builtin://digits-cnn",
    output: str | None = None,
    **spec,
) -> dict:
    annotations = {POD_ANNOTATIONS_ANNOTATION: json.dumps({OUTCOME_ANNOTATION: outcome})} if outcome else {}
    return {
        "apiVersion": "slimserve.io/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "model": {"uri": model},
            "steps": FAST_DIGITS_STEPS,
            "output": {"uri": output or f"s3://artifacts/{name}"},
            **spec,
        },
    }


def status_of(cp, namespace: str, name: str) -> dict:
    return get(cp, namespace, "compressionjob", name).get("status") or {}


def wait_phase(cp, namespace: str, name: str, phase: str, timeout: float = 60) -> dict:
    return wait_for(
        f"CompressionJob {name} in phase {phase}",
        lambda: (status := status_of(cp, namespace, name)).get("phase") == phase and status,
        timeout,
    )


def jobs_of(cp, namespace: str, name: str) -> list[dict]:
    jobs = get(cp, namespace, "jobs", "-l", f"app.kubernetes.io/instance={name}")["items"]
    return sorted(jobs, key=lambda job: job["metadata"]["name"])


def pods_of_job(cp, namespace: str, job: str) -> list[dict]:
    return get(cp, namespace, "pods", "-l", f"batch.kubernetes.io/job-name={job}")["items"]


def bound_claim(cp, namespace: str, claim: str) -> None:
    """A PersistentVolumeClaim bound to a static PersistentVolume, so pods that mount it can be scheduled."""
    volume = f"{namespace}-{claim}"
    apply(
        cp,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "static",
                "persistentVolumeReclaimPolicy": "Delete",
                "hostPath": {"path": f"/tmp/{volume}"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "static",
                "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    wait_for(f"claim {claim} bound", lambda: get(cp, namespace, "pvc", claim).get("status", {}).get("phase") == "Bound")


def sink_for(cp, namespace: str, name: str, **kwargs) -> KubernetesStatusSink:
    """The pod's sink, authenticated as the CompressionJob's own ServiceAccount."""
    kubeconfig = cp.service_account_kubeconfig(namespace, f"{name}-compressor")
    api = kube_config.new_client_from_config(config_file=str(kubeconfig))
    return KubernetesStatusSink(f"{namespace}/{name}", **kwargs, api=api)


def running(cp, namespace: str, *manifests: dict) -> None:
    """Apply CompressionJobs whose pods keep running, and wait until they run."""
    apply(cp, namespace, *manifests)
    for manifest in manifests:
        wait_phase(cp, namespace, manifest["metadata"]["name"], "Running")


def example_running(cp, namespace: str, example: Path) -> tuple[dict, dict]:
    """An example's CompressionJob and ModelService applied, with its claim `models` bound; kwok's compression
    pod keeps running until the test ends it. Returns both manifests."""
    job, service = yaml.safe_load_all(example.read_text())
    job["metadata"]["annotations"] = {POD_ANNOTATIONS_ANNOTATION: json.dumps({OUTCOME_ANNOTATION: "run"})}
    bound_claim(cp, namespace, "models")
    apply(cp, namespace, service)
    running(cp, namespace, job)
    return job, service


# ---- the Job ------------------------------------------------------------------------------------------


def test_job_pod_is_placed_hardened_and_wired(control_plane, operator, namespace):
    cp = control_plane
    bound_claim(cp, namespace, "models")
    bound_claim(cp, namespace, "artifacts")
    cpu = compression_job(
        "digits-cpu",
        outcome="run",
        model="pvc://models/digits-cnn",
        output="pvc://artifacts/digits-slim",
        resources={"requests": {"cpu": "1", "memory": "2Gi"}},
        backoffLimit=2,
        activeDeadlineSeconds=900,
    )
    gpu = compression_job(
        "digits-gpu",
        outcome="run",
        nodePool="gpu",
        steps=[{"quantize": {"method": "int4-weight-only"}}],
        s3={"credentialsSecret": {"name": "minio"}},
    )
    running(cp, namespace, cpu, gpu)

    (cpu_job,) = jobs_of(cp, namespace, "digits-cpu")
    assert cpu_job["metadata"]["name"] == "digits-cpu-g1"
    owner = cpu_job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("CompressionJob", "digits-cpu", True)
    assert cpu_job["spec"]["backoffLimit"] == 2 and cpu_job["spec"]["activeDeadlineSeconds"] == 900
    assert "ttlSecondsAfterFinished" not in cpu_job["spec"]
    (cpu_pod,) = pods_of_job(cp, namespace, "digits-cpu-g1")
    assert cpu_pod["spec"]["nodeName"] in CPU_NODES
    (container,) = cpu_pod["spec"]["containers"]
    assert container["image"] == "registry.test/slimserve/compressor:test"
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert cpu_pod["spec"]["securityContext"]["runAsUser"] == 65532
    assert cpu_pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert cpu_pod["spec"]["serviceAccountName"] == "digits-cpu-compressor"
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
    assert mounts["/mnt/pvc/models"] is True and mounts["/mnt/pvc/artifacts"] is False
    assert "/tmp" in mounts and "/var/cache/slimserve" in mounts
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SLIMSERVE_STATUS_TARGET"] == f"{namespace}/digits-cpu"
    assert env["SLIMSERVE_JOB_GENERATION"] == "1"
    assert json.loads(env["SLIMSERVE_JOB_SPEC"])["output"]["uri"] == "pvc://artifacts/digits-slim"
    assert env["SLIMSERVE_DEVICE"] == "cpu"

    (gpu_job,) = jobs_of(cp, namespace, "digits-gpu")
    (gpu_pod,) = pods_of_job(cp, namespace, gpu_job["metadata"]["name"])
    assert gpu_pod["spec"]["nodeName"] in GPU_NODES
    (gpu_container,) = gpu_pod["spec"]["containers"]
    assert gpu_container["image"] == "registry.test/slimserve/compressor:test-cuda"
    # The configured CPU and memory for a job that names none (Guaranteed), the pool's GPU beside them.
    assert gpu_container["resources"]["limits"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_pod["spec"]["tolerations"]
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in gpu_container["env"] if "valueFrom" in e}
    assert {"name": "SLIMSERVE_DEVICE", "value": "cuda"} in gpu_container["env"]  # no GPU in sight: fail, not CPU
    assert secret_env["AWS_ACCESS_KEY_ID"] == {"name": "minio", "key": "AWS_ACCESS_KEY_ID"}

    status = status_of(cp, namespace, "digits-cpu")
    assert status["observedGeneration"] == 1 and status["jobName"] == "digits-cpu-g1" and status["startTime"]
    assert condition(status, "Started")["status"] == "True"
    assert (condition(status, "Succeeded")["status"], condition(status, "Succeeded")["reason"]) == ("Unknown", "Running")
    reasons = {reason for _, reason, _ in events_of(cp, namespace, "digits-cpu")}
    assert {"Pending", "PodStarted", "Running"} <= reasons
    printed = cp.kubectl("get", "-n", namespace, "compressionjob", "digits-cpu").stdout
    assert "Running" in printed


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"nodePool": "tpu"}, "spec.nodePool: unknown node pool 'tpu' (known: cpu, gpu)"),
        ({"output": "pvc:///artifacts/x"}, "spec.output.uri: 'pvc:///artifacts/x' names no claim"),
    ],
)
def test_semantic_errors_give_invalid_spec_and_no_job(control_plane, operator, namespace, spec, field):
    cp = control_plane
    apply(cp, namespace, compression_job("bad", **spec))
    cp.kubectl("wait", "-n", namespace, "compressionjob/bad", "--for=condition=Succeeded=False", "--timeout=60s")
    status = status_of(cp, namespace, "bad")
    assert status["phase"] == "Invalid" and status["observedGeneration"] == 1
    assert condition(status, "Succeeded")["reason"] == "InvalidSpec"
    assert field in condition(status, "Succeeded")["message"]
    assert jobs_of(cp, namespace, "bad") == []
    assert ("Warning", "InvalidSpec") in {(type_, reason) for type_, reason, _ in events_of(cp, namespace, "bad")}


def test_failed_pods_fail_the_job_after_its_retries_with_the_pods_reason(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, compression_job("flaky", outcome="fail", backoffLimit=1))
    cp.kubectl("wait", "-n", namespace, "compressionjob/flaky", "--for=condition=Succeeded=False", "--timeout=90s")
    status = status_of(cp, namespace, "flaky")
    succeeded = condition(status, "Succeeded")
    assert status["phase"] == "Failed" and succeeded["reason"] == "JobFailed"
    assert "Error, exit code 1: failed by slimserve.io/test-outcome" in succeeded["message"]
    assert status["completionTime"]
    pods = pods_of_job(cp, namespace, "flaky-g1")
    assert len(pods) == 2 and all(pod["status"]["phase"] == "Failed" for pod in pods)  # backoffLimit 1: two tries
    warnings = [(reason, message) for type_, reason, message in events_of(cp, namespace, "flaky") if type_ == "Warning"]
    assert any(reason == "JobFailed" and "failed by slimserve.io/test-outcome" in message for reason, message in warnings)


def test_a_job_that_completes_without_an_artifact_fails(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, compression_job("silent"))
    cp.kubectl("wait", "-n", namespace, "compressionjob/silent", "--for=condition=Succeeded=False", "--timeout=60s")
    assert condition(status_of(cp, namespace, "silent"), "Succeeded")["reason"] == "ArtifactMissing"


# ---- lifecycle ----------------------------------------------------------------------------------------


def test_spec_change_replaces_the_running_job_and_resets_the_run(control_plane, operator, namespace):
    cp = control_plane
    manifest = compression_job("evolving", outcome="run")
    running(cp, namespace, manifest)
    sink = sink_for(cp, namespace, "evolving", min_interval_seconds=0)
    sink.progress({"step": "prune/structured", "stepIndex": 0, "stepsTotal": 3, "fraction": 0.3, "message": "pruning"})
    assert status_of(cp, namespace, "evolving")["progress"]["fraction"] == 0.3

    manifest["spec"]["steps"] = [{"quantize": {"method": "int8-static"}}]
    apply(cp, namespace, manifest)
    wait_for("the old Job gone", lambda: not exists(cp, namespace, "job", "evolving-g1"))
    wait_for("the old pods gone", lambda: pods_of_job(cp, namespace, "evolving-g1") == [])
    status = wait_phase(cp, namespace, "evolving", "Running")
    assert status["observedGeneration"] == 2 and status["jobName"] == "evolving-g2"
    assert "progress" not in status  # the previous run's progress is gone
    assert [job["metadata"]["name"] for job in jobs_of(cp, namespace, "evolving")] == ["evolving-g2"]

    sink.progress({"step": "prune/structured", "fraction": 0.6})  # the old run's pod, still talking
    assert sink.stale and "progress" not in status_of(cp, namespace, "evolving")


def test_operator_restart_and_label_edits_start_no_new_job(control_plane, operator, namespace):
    cp = control_plane
    running(cp, namespace, compression_job("long", outcome="run"))
    apply(cp, namespace, compression_job("done"))
    finished = wait_phase(cp, namespace, "done", "Failed")  # kwok completes it without an artifact

    operator.restart()
    for name in ("long", "done"):
        cp.kubectl("label", "-n", namespace, f"compressionjob/{name}", "team=vision")
    # Kopf handles an object's events in order, resuming it first (or with the edit), and records the labels it
    # handled once it is through: then the restarted operator has done all it would for either.
    for name in ("long", "done"):
        wait_for(f"the label edit of {name} handled", lambda name=name: last_handled(
            get(cp, namespace, "compressionjob", name)).get("metadata", {}).get("labels", {}).get("team") == "vision")
    assert [job["metadata"]["name"] for job in jobs_of(cp, namespace, "long")] == ["long-g1"]
    assert [job["metadata"]["name"] for job in jobs_of(cp, namespace, "done")] == ["done-g1"]
    assert status_of(cp, namespace, "done")["conditions"] == finished["conditions"]
    assert status_of(cp, namespace, "long")["phase"] == "Running"

    # The restarted operator still follows the running Job to its end.
    (pod,) = pods_of_job(cp, namespace, "long-g1")
    cp.kubectl("annotate", "-n", namespace, "pod", pod["metadata"]["name"], f"{OUTCOME_ANNOTATION}=fail", "--overwrite")
    assert wait_phase(cp, namespace, "long", "Failed")["jobName"] == "long-g1"


def test_deleting_the_compression_job_removes_its_job_pods_and_access(control_plane, operator, namespace):
    cp = control_plane
    running(cp, namespace, compression_job("gone", outcome="run"))
    assert pods_of_job(cp, namespace, "gone-g1")
    cp.kubectl("delete", "-n", namespace, "compressionjob/gone", "--wait=true", "--timeout=60s")
    # The garbage collector learns of a new CRD at its next discovery sync (every 30 s): early in a session, waits.
    wait_for("the Job gone", lambda: not exists(cp, namespace, "job", "gone-g1"), timeout=90)
    wait_for("its pods gone", lambda: pods_of_job(cp, namespace, "gone-g1") == [])
    for kind in ("serviceaccount", "role", "rolebinding"):
        wait_for(f"the {kind} gone", lambda kind=kind: not exists(cp, namespace, kind, "gone-compressor"))


def test_made_again_under_the_same_name_it_runs_its_own_job_not_the_old_one(control_plane, operator, namespace):
    cp = control_plane
    running(cp, namespace, compression_job("again", outcome="run"))
    old_job = get(cp, namespace, "job", "again-g1")["metadata"]["uid"]
    cp.kubectl("delete", "-n", namespace, "compressionjob/again", "--wait=false")
    apply(cp, namespace, compression_job("again", outcome="run"))
    new_owner = get(cp, namespace, "compressionjob", "again")["metadata"]["uid"]
    wait_phase(cp, namespace, "again", "Running")
    job = get(cp, namespace, "job", "again-g1")
    assert job["metadata"]["uid"] != old_job
    for kind in ("job", "serviceaccount", "role", "rolebinding"):
        name = "again-g1" if kind == "job" else "again-compressor"
        owners = [ref["uid"] for ref in get(cp, namespace, kind, name)["metadata"]["ownerReferences"]]
        assert owners == [new_owner], f"{kind} {name}: {owners}"


# ---- the pod's access and its status sink -------------------------------------------------------------


def test_job_service_account_may_patch_its_own_status_and_nothing_else(control_plane, operator, namespace):
    cp = control_plane
    running(cp, namespace, compression_job("mine", outcome="run"), compression_job("other", outcome="run"))
    kubeconfig = cp.service_account_kubeconfig(namespace, "mine-compressor")

    def as_pod(*args: str):
        return cp.kubectl("-n", namespace, *args, kubeconfig=kubeconfig, check=False)

    patch = json.dumps({"status": {"progress": {"message": "hello"}}})
    allowed = as_pod("patch", "compressionjob/mine", "--subresource=status", "--type=merge", "-p", patch)
    assert allowed.returncode == 0, allowed.stderr
    assert status_of(cp, namespace, "mine")["progress"]["message"] == "hello"
    refused = {
        "another CompressionJob's status": as_pod("patch", "compressionjob/other", "--subresource=status", "--type=merge", "-p", patch),
        "its own spec": as_pod("patch", "compressionjob/mine", "--type=merge", "-p", json.dumps({"spec": {"backoffLimit": 3}})),
        "secrets": as_pod("get", "secrets"),
        "pods": as_pod("get", "pods"),
        "jobs": as_pod("delete", "job", "mine-g1"),
    }
    for what, result in refused.items():
        assert result.returncode != 0 and "Forbidden" in result.stderr, f"{what}: {result.stdout}{result.stderr}"


def test_sink_throttles_progress_and_keeps_the_latest(control_plane, operator, namespace):
    cp = control_plane
    running(cp, namespace, compression_job("busy", outcome="run"))
    # The sink's clock stands still during the burst, so that a slow machine cannot stretch the loop past the
    # interval; the trailing write still comes from the sink's real timer, half a second later.
    sink = sink_for(cp, namespace, "busy", min_interval_seconds=0.5, clock=lambda: 0.0)
    for index in range(20):
        sink.progress({"step": "distill", "stepIndex": 1, "stepsTotal": 3, "fraction": index / 20, "message": f"epoch {index}"})
    assert sink.writes == 1  # the first event at once, the rest held back
    wait_for("the trailing progress write", lambda: status_of(cp, namespace, "busy")["progress"]["message"] == "epoch 19")
    assert sink.writes == 2
    assert status_of(cp, namespace, "busy")["progress"] == {
        "step": "distill", "stepIndex": 1, "stepsTotal": 3, "fraction": 0.95, "message": "epoch 19",
    }


def test_sink_retries_a_conflict_from_a_concurrent_writer(control_plane, operator, namespace, monkeypatch, caplog):
    cp = control_plane
    running(cp, namespace, compression_job("contended", outcome="run"))
    sink = sink_for(cp, namespace, "contended", min_interval_seconds=0)
    original_read = status_update.read_status
    interleaved = []

    def read_then_someone_else_writes(api, plural, ns, name):
        current = original_read(api, plural, ns, name)
        if not interleaved:  # between the sink's read and its patch, another writer changes the status
            patch = json.dumps({"status": {"progress": {"message": "someone else"}}})
            cp.kubectl("patch", "-n", ns, f"compressionjob/{name}", "--subresource=status", "--type=merge", "-p", patch)
            interleaved.append(current["metadata"]["resourceVersion"])
        return current

    monkeypatch.setattr(status_update, "read_status", read_then_someone_else_writes)
    with caplog.at_level(logging.INFO, logger="slimserve.kube.status"):
        sink.progress({"step": "quantize/int8-static", "fraction": 0.9, "message": "calibrating"})
    assert interleaved, "the concurrent write did not happen"
    assert any("409" in record.getMessage() and "retrying" in record.getMessage() for record in caplog.records)
    assert status_of(cp, namespace, "contended")["progress"]["message"] == "calibrating"
    assert sink.writes == 1


def test_sink_writes_result_that_the_operator_turns_into_success(control_plane, operator, namespace):
    cp = control_plane
    running(cp, namespace, compression_job("finished", outcome="run"))
    sink = sink_for(cp, namespace, "finished")
    measured = {"sizeBytes": 1000, "parameters": 500, "latencyP50Ms": 1.0, "throughput": 900.0, "metric": 0.97}
    sink.result(
        {
            "artifact": {"uri": "s3://artifacts/finished", "digest": "sha256:" + "ab" * 32, "sizeBytes": 1234},
            "metrics": {
                "baseline": {**measured, "sizeBytes": 4000},
                "compressed": measured,
                "sizeRatio": 4.0,
                "speedup": 1.5,
                "accuracyDelta": -0.004,
            },
        }
    )
    status = status_of(cp, namespace, "finished")
    assert status["artifact"]["format"] == "slimserve/v1" and status["metrics"]["sizeRatio"] == 4.0
    assert status["progress"]["fraction"] == 1.0
    (pod,) = pods_of_job(cp, namespace, "finished-g1")
    cp.kubectl("annotate", "-n", namespace, "pod", pod["metadata"]["name"], f"{OUTCOME_ANNOTATION}=succeed", "--overwrite")
    cp.kubectl("wait", "-n", namespace, "compressionjob/finished", "--for=condition=Succeeded", "--timeout=60s")
    status = status_of(cp, namespace, "finished")
    assert status["phase"] == "Succeeded" and status["completionTime"]
    assert condition(status, "Succeeded")["message"] == f"artifact s3://artifacts/finished (sha256:{'ab' * 32})"


# ---- end to end: the real compressor reports through the API ---------------------------------------


def run_pod_locally(pod: dict, kubeconfig: Path, root: Path) -> subprocess.Popen:
    """Run the pod's container as a local process: its command, args and environment, each mounted volume a
    folder at the same path under `root` (paths in the environment move along), the API reached as the pod's
    ServiceAccount through `kubeconfig`."""
    (container,) = pod["spec"]["containers"]
    for mount in container["volumeMounts"]:
        (root / mount["mountPath"].lstrip("/")).mkdir(parents=True, exist_ok=True)

    def local(value: str) -> str:
        return str(root / value.lstrip("/")) if value.startswith("/") else value

    env = {item["name"]: local(item["value"]) for item in container["env"] if "value" in item}
    env.update(
        # The demo model's trained weights come from this machine's cache: a fresh pod trains them once first
        # (half a minute of CPU here), which is not what this test is about.
        SLIMSERVE_CACHE=str(cache_root()),
        KUBECONFIG=str(kubeconfig),
        PATH=os.environ["PATH"],
        OMP_NUM_THREADS="2",
    )
    executable = Path(sys.executable).parent / container["command"][0]  # `slimserve` of this environment
    command = [str(executable), *container["command"][1:], *container["args"]]
    with (root / "stdout").open("w") as stdout, (root / "stderr").open("w") as stderr:
        return subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr)


@pytest.mark.slow
def test_real_compressor_reports_through_the_api_and_the_job_succeeds(control_plane, operator, namespace, tmp_path):
    cp = control_plane
    bound_claim(cp, namespace, "artifacts")
    manifest = compression_job(
        "digits-slim", outcome="run", output="pvc://artifacts/digits-slim", steps=E2E_STEPS, evaluation={"maxDrop": 0.05}
    )
    running(cp, namespace, manifest)
    (pod,) = pods_of_job(cp, namespace, "digits-slim-g1")
    kubeconfig = cp.service_account_kubeconfig(namespace, pod["spec"]["serviceAccountName"])

    process = run_pod_locally(pod, kubeconfig, tmp_path)
    seen = set()
    with cp.api_client() as api:  # polled in-process: a kubectl every poll would take CPU from the compressor
        custom = client.CustomObjectsApi(api)
        try:
            deadline = time.monotonic() + 480
            while process.poll() is None and time.monotonic() < deadline:  # live progress, while it works
                found = custom.get_namespaced_custom_object(
                    "slimserve.io", "v1alpha1", namespace, "compressionjobs", "digits-slim"
                )
                seen.add(((found.get("status") or {}).get("progress") or {}).get("fraction"))
                time.sleep(0.5)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0, (tmp_path / "stderr").read_text()[-3000:]
    stdout = (tmp_path / "stdout").read_text()
    assert any(fraction is not None and 0 < fraction < 1 for fraction in seen), seen

    status = status_of(cp, namespace, "digits-slim")
    artifact_dir = tmp_path / "mnt" / "pvc" / "artifacts" / "digits-slim"
    manifest_digest = "sha256:" + hashlib.sha256((artifact_dir / "manifest.json").read_bytes()).hexdigest()
    assert status["artifact"]["uri"] == "pvc://artifacts/digits-slim"
    assert status["artifact"]["digest"] == manifest_digest
    metrics = status["metrics"]
    assert metrics["sizeRatio"] > 1 and metrics["accuracyDelta"] >= -0.05
    assert [step["step"] for step in metrics["steps"]] == ["prune/structured"]
    result = json.loads(stdout.strip().splitlines()[-1])  # the JSON-lines sink saw the same result
    assert result["event"] == "result" and result["artifact"]["digest"] == manifest_digest

    cp.kubectl("annotate", "-n", namespace, "pod", pod["metadata"]["name"], f"{OUTCOME_ANNOTATION}=succeed", "--overwrite")
    cp.kubectl("wait", "-n", namespace, "compressionjob/digits-slim", "--for=condition=Succeeded", "--timeout=60s")
    status = status_of(cp, namespace, "digits-slim")
    assert status["phase"] == "Succeeded" and status["completionTime"]
    printed = cp.kubectl("get", "-n", namespace, "compressionjob", "digits-slim").stdout.splitlines()
    header, row = printed[0].split(), printed[1].split()
    columns = dict(zip(header, row))
    assert columns["PHASE"] == "Succeeded" and columns["SUCCEEDED"] == "True"
    assert float(columns["SIZE-RATIO"]) == pytest.approx(metrics["sizeRatio"], rel=1e-3)
