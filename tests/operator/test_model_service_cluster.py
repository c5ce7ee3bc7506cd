"""The ModelService controller on the real control plane, with the operator as a process (kwok nodes).

kwok runs no containers: the server pods the Deployments make become Running and Ready at once, which is
what `kubectl wait --for=condition=Ready msvc/NAME` waits for. A CompressionJob's success is written into its
status here the way the compression pod would write it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimserve.api.model_service import ModelServiceSpec
from slimserve.controller import kube
from slimserve.controller.builders import model_service as builders
from slimserve.controller.builders.compression_job import POD_ANNOTATIONS_ANNOTATION
from slimserve.controller.config import OperatorConfig
from tests.cluster.controlplane import OUTCOME_ANNOTATION
from tests.cluster.helpers import apply, condition, events_of, exists, get, wait_established, wait_for
from tests.operator.conftest import TEST_OPERATOR_CONFIG

pytestmark = pytest.mark.cluster

KEDA_CRD = Path(__file__).parent / "data" / "keda-scaledobjects-crd.yaml"
KEDA_CRD_NAME = "scaledobjects.keda.sh"
CPU_NODES = {"kwok-cpu-0", "kwok-cpu-1", "kwok-cpu-2"}
GPU_NODES = {"kwok-gpu-0", "kwok-gpu-1"}
SERVER_LABELS = "app.kubernetes.io/managed-by=slimserve-operator,app.kubernetes.io/component=server"
DIGEST_A = "sha256:" + "a1" * 32
DIGEST_B = "sha256:" + "b2" * 32


def model_service(name: str, **spec) -> dict:
    spec.setdefault("model", {"uri": "builtin://digits-mlp"})
    return {"apiVersion": "slimserve.io/v1alpha1", "kind": "ModelService", "metadata": {"name": name}, "spec": spec}


def status_of(cp, namespace: str, name: str) -> dict:
    return get(cp, namespace, "modelservice", name).get("status") or {}


def wait_condition(cp, namespace: str, name: str, type_: str, status: str, reason: str | None = None, timeout=60):
    def check():
        found = condition(status_of(cp, namespace, name), type_)
        return found.get("status") == status and (reason is None or found.get("reason") == reason) and found

    return wait_for(f"{name}: {type_}={status} {reason or ''}", check, timeout)


def wait_ready(cp, namespace: str, *names: str, timeout: int = 60) -> None:
    cp.kubectl("wait", "-n", namespace, "--for=condition=Ready", *(f"msvc/{n}" for n in names), f"--timeout={timeout}s",
               timeout=timeout + 10)


def pods_of(cp, namespace: str, name: str) -> list[dict]:
    return get(cp, namespace, "pods", "-l", f"app.kubernetes.io/instance={name},app.kubernetes.io/component=server")[
        "items"
    ]


def replica_sets_of(cp, namespace: str, name: str) -> list[dict]:
    return get(cp, namespace, "replicasets", "-l", f"app.kubernetes.io/instance={name}")["items"]


def deployment_of(cp, namespace: str, name: str) -> dict:
    return get(cp, namespace, "deployment", name, "--show-managed-fields")


def compression_job(name: str) -> dict:
    """A CompressionJob whose pod keeps running (kwok), so only the status written below ends it."""
    return {
        "apiVersion": "slimserve.io/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": name, "annotations": {POD_ANNOTATIONS_ANNOTATION: json.dumps({OUTCOME_ANNOTATION: "run"})}},
        "spec": {
            "model": {"uri": "builtin://digits-mlp"},
            "steps": [{"quantize": {"method": "int8-dynamic"}}],
            "output": {"uri": f"s3://artifacts/{name}"},
        },
    }


def succeed(cp, namespace: str, job: str, digest: str) -> None:
    """Write what the compression pod writes on success."""
    status = {
        "phase": "Succeeded",
        "artifact": {"uri": f"s3://artifacts/{job}", "digest": digest, "sizeBytes": 1234, "format": "slimserve/v1"},
        "conditions": [
            {"type": "Succeeded", "status": "True", "reason": "Completed", "message": "artifact written",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ],
    }
    cp.kubectl("patch", "-n", namespace, "compressionjob", job, "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": status}))


def field_manager_owns_replicas(deployment: dict) -> bool:
    for entry in deployment["metadata"]["managedFields"]:
        if entry.get("manager") == kube.FIELD_MANAGER and "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {}):
            return True
    return False


# ---- placement ----------------------------------------------------------------------------------------


def test_cpu_service_runs_on_cpu_nodes_and_becomes_ready(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, model_service("digits", replicas=3, modelName="mnist"))
    wait_ready(cp, namespace, "digits")
    pods = pods_of(cp, namespace, "digits")
    assert len(pods) == 3
    assert {p["spec"]["nodeName"] for p in pods} <= CPU_NODES
    for pod in pods:
        (server,) = pod["spec"]["containers"]
        assert server["image"] == "registry.test/slimserve/server:test"
        assert not any("gpu" in r for r in server["resources"].get("limits", {}))
        assert {"name": "SLIMSERVE_DEVICE", "value": "cpu"} in server["env"]
    status = status_of(cp, namespace, "digits")
    assert status["url"] == f"http://digits.{namespace}.svc.cluster.local:8080"
    assert status["grpcAddress"] == f"digits.{namespace}.svc.cluster.local:9000"
    assert (status["replicas"], status["readyReplicas"], status["modelUri"]) == (3, 3, "builtin://digits-mlp")
    assert status["observedGeneration"] == get(cp, namespace, "modelservice", "digits")["metadata"]["generation"]
    assert exists(cp, namespace, "service", "digits")
    assert get(cp, namespace, "pdb", "digits")["spec"]["maxUnavailable"] == 1
    wait_for("an Event of the service becoming Ready",
             lambda: ("Normal", "Available") in {(t, r) for t, r, _ in events_of(cp, namespace, "digits", "ModelService")})


def test_gpu_service_runs_on_gpu_nodes_and_requests_gpus(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, model_service("embedder", nodePool="gpu", replicas=2))
    wait_ready(cp, namespace, "embedder")
    pods = pods_of(cp, namespace, "embedder")
    assert len(pods) == 2
    assert {p["spec"]["nodeName"] for p in pods} <= GPU_NODES
    for pod in pods:
        (server,) = pod["spec"]["containers"]
        assert server["image"] == "registry.test/slimserve/server:test-cuda"
        assert str(server["resources"]["limits"]["nvidia.com/gpu"]) == "1"
        assert {"name": "SLIMSERVE_DEVICE", "value": "cuda"} in server["env"]  # no GPU in sight: fail, not CPU


def test_unknown_node_pool_is_a_condition_and_creates_nothing(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, model_service("lost", nodePool="tpu"))
    ready = wait_condition(cp, namespace, "lost", "Ready", "False", "UnknownNodePool")
    assert "tpu" in ready["message"] and "cpu" in ready["message"]
    assert not exists(cp, namespace, "deployment", "lost")


# ---- the model from a CompressionJob ------------------------------------------------------------------


def test_compression_job_ref_waits_serves_and_rolls_on_a_new_digest(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, model_service("slim-svc", model={"compressionJobRef": {"name": "slim"}}))
    missing = wait_condition(cp, namespace, "slim-svc", "ModelAvailable", "False", "CompressionJobNotFound")
    assert "slim" in missing["message"]
    assert condition(status_of(cp, namespace, "slim-svc"), "Ready")["status"] == "False"

    apply(cp, namespace, compression_job("slim"))
    wait_condition(cp, namespace, "slim-svc", "ModelAvailable", "False", "WaitingForCompression")
    # The service's pass after the job started running says so: by then it had made no Deployment.
    wait_for("the service's pass over the running job", lambda: "(phase Running)" in condition(
        status_of(cp, namespace, "slim-svc"), "ModelAvailable").get("message", ""))
    assert not exists(cp, namespace, "deployment", "slim-svc")

    succeed(cp, namespace, "slim", DIGEST_A)
    wait_ready(cp, namespace, "slim-svc")
    status = status_of(cp, namespace, "slim-svc")
    assert (status["modelUri"], status["modelDigest"]) == ("s3://artifacts/slim", DIGEST_A)
    first = deployment_of(cp, namespace, "slim-svc")
    template = first["spec"]["template"]
    assert template["metadata"]["annotations"][builders.DIGEST_ANNOTATION] == DIGEST_A
    assert {"name": "SLIMSERVE_ARTIFACT", "value": "s3://artifacts/slim"} in template["spec"]["containers"][0]["env"]
    assert len(replica_sets_of(cp, namespace, "slim-svc")) == 1

    # The same artifact again, and a pass of the service (a spec change outside the pod template): no rollout.
    succeed(cp, namespace, "slim", DIGEST_A)
    cp.kubectl("patch", "-n", namespace, "msvc", "slim-svc", "--type=merge", "-p", '{"spec":{"replicas":2}}')
    generation = get(cp, namespace, "modelservice", "slim-svc")["metadata"]["generation"]
    wait_for("the spec change handled", lambda: status_of(cp, namespace, "slim-svc")["observedGeneration"] == generation)
    same = deployment_of(cp, namespace, "slim-svc")
    assert same["spec"]["replicas"] == 2
    assert same["spec"]["template"] == first["spec"]["template"]
    assert len(replica_sets_of(cp, namespace, "slim-svc")) == 1
    wait_ready(cp, namespace, "slim-svc")

    # A new artifact: a new pod template, a new ReplicaSet, the new digest in status once rolled out.
    succeed(cp, namespace, "slim", DIGEST_B)
    wait_for("a second ReplicaSet", lambda: len(replica_sets_of(cp, namespace, "slim-svc")) == 2)
    rolled = deployment_of(cp, namespace, "slim-svc")
    assert rolled["spec"]["template"]["metadata"]["annotations"][builders.DIGEST_ANNOTATION] == DIGEST_B
    assert rolled["metadata"]["generation"] == same["metadata"]["generation"] + 1
    wait_ready(cp, namespace, "slim-svc")
    wait_for("status with the new digest", lambda: status_of(cp, namespace, "slim-svc").get("modelDigest") == DIGEST_B)


def test_applying_the_same_deployment_again_changes_nothing(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, model_service("steady", replicas=2))
    wait_ready(cp, namespace, "steady")
    body = get(cp, namespace, "modelservice", "steady")
    live = deployment_of(cp, namespace, "steady")
    config = OperatorConfig.model_validate(TEST_OPERATOR_CONFIG)
    owner = builders.Owner.from_body(body)
    desired = builders.build_deployment(
        owner, ModelServiceSpec.from_json(body["spec"]), builders.ArtifactToServe("builtin://digits-mlp"),
        config.node_pool("cpu"), config, replicas=2,
    )
    with cp.api_client() as api:
        again = kube.apply(api, desired)
    assert again["metadata"]["generation"] == live["metadata"]["generation"]
    assert again["metadata"]["resourceVersion"] == live["metadata"]["resourceVersion"]


# ---- autoscaling --------------------------------------------------------------------------------------


def test_cpu_autoscaling_creates_an_hpa_that_owns_replicas(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, model_service("elastic", autoscaling={"metric": "cpu", "minReplicas": 2, "maxReplicas": 6,
                                                                "target": 65}))
    wait_ready(cp, namespace, "elastic")
    hpa = get(cp, namespace, "hpa", "elastic")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "elastic"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 65}
    assert not field_manager_owns_replicas(deployment_of(cp, namespace, "elastic"))
    assert condition(status_of(cp, namespace, "elastic"), "AutoscalingReady")["reason"] == "HorizontalPodAutoscaler"

    # Autoscaling removed: fixed replicas again, the HPA deleted.
    cp.kubectl("patch", "-n", namespace, "msvc", "elastic", "--type=json",
               "-p", json.dumps([{"op": "remove", "path": "/spec/autoscaling"}, {"op": "replace", "path": "/spec/replicas", "value": 1}]))
    wait_for("the HPA deleted", lambda: not exists(cp, namespace, "hpa", "elastic"))
    wait_for("the PDB deleted", lambda: not exists(cp, namespace, "pdb", "elastic"))
    fixed = deployment_of(cp, namespace, "elastic")
    assert fixed["spec"]["replicas"] == 1 and field_manager_owns_replicas(fixed)
    wait_for("AutoscalingReady gone",
             lambda: not condition(status_of(cp, namespace, "elastic"), "AutoscalingReady"))


def test_turning_autoscaling_on_keeps_the_running_replicas(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, model_service("growing", replicas=3))
    wait_ready(cp, namespace, "growing")
    generation = deployment_of(cp, namespace, "growing")["metadata"]["generation"]
    cp.kubectl("patch", "-n", namespace, "msvc", "growing", "--type=merge",
               "-p", json.dumps({"spec": {"autoscaling": {"metric": "cpu", "minReplicas": 2, "maxReplicas": 6}}}))
    wait_for("the HPA", lambda: exists(cp, namespace, "hpa", "growing"))
    wait_for("replicas handed over", lambda: not field_manager_owns_replicas(deployment_of(cp, namespace, "growing")))
    deployment = deployment_of(cp, namespace, "growing")
    assert deployment["spec"]["replicas"] == 3  # not reset to 1 when the operator stopped stating them
    assert deployment["metadata"]["generation"] == generation
    assert len(pods_of(cp, namespace, "growing")) == 3


@pytest.fixture
def keda_crd(control_plane):
    """Installs KEDA's real ScaledObject CRD on request; always removed afterwards (it is cluster-wide)."""
    cp = control_plane

    def install() -> None:
        cp.kubectl("apply", "--server-side", "-f", str(KEDA_CRD))
        wait_established(cp, KEDA_CRD_NAME)

    try:
        yield install
    finally:
        cp.kubectl("delete", "crd", KEDA_CRD_NAME, "--ignore-not-found", "--wait=true", timeout=120)


def test_concurrency_autoscaling_needs_keda_and_follows_its_api(control_plane, operator, namespace, keda_crd):
    cp = control_plane
    autoscaling = {"metric": "concurrency", "minReplicas": 1, "maxReplicas": 5, "target": 8}
    apply(cp, namespace, model_service("bursty", autoscaling=autoscaling))
    missing = wait_condition(cp, namespace, "bursty", "AutoscalingReady", "False", "KedaNotInstalled")
    assert "KEDA" in missing["message"]
    wait_ready(cp, namespace, "bursty")  # still serving, with the floor of one replica
    deployment = deployment_of(cp, namespace, "bursty")
    assert deployment["spec"]["replicas"] == 1 and field_manager_owns_replicas(deployment)
    wait_for("a warning Event", lambda: ("Warning", "KedaNotInstalled")
             in {(t, r) for t, r, _ in events_of(cp, namespace, "bursty", "ModelService")})

    keda_crd()
    wait_condition(cp, namespace, "bursty", "AutoscalingReady", "True", "ScaledObject")
    scaled = get(cp, namespace, "scaledobjects.keda.sh", "bursty")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "bursty"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 5)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == "8"
    assert "slimserve_inflight_requests" in trigger["metadata"]["query"]
    assert scaled["metadata"]["ownerReferences"][0]["name"] == "bursty"
    wait_for("replicas handed to KEDA", lambda: not field_manager_owns_replicas(deployment_of(cp, namespace, "bursty")))

    # A ScaledObject deleted by hand comes back.
    cp.kubectl("delete", "-n", namespace, "scaledobjects.keda.sh", "bursty")
    wait_for("the ScaledObject restored", lambda: exists(cp, namespace, "scaledobjects.keda.sh", "bursty"))

    # KEDA uninstalled: back to the floor of replicas, owned by the operator.
    cp.kubectl("delete", "crd", KEDA_CRD_NAME, "--wait=true", timeout=120)
    wait_condition(cp, namespace, "bursty", "AutoscalingReady", "False", "KedaNotInstalled")
    wait_for("replicas owned again", lambda: field_manager_owns_replicas(deployment_of(cp, namespace, "bursty")))
    wait_ready(cp, namespace, "bursty")


# ---- drift, garbage collection, restarts --------------------------------------------------------------


def test_children_deleted_or_edited_by_hand_are_restored(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, model_service("sturdy", replicas=2))
    wait_ready(cp, namespace, "sturdy")
    uid = deployment_of(cp, namespace, "sturdy")["metadata"]["uid"]

    cp.kubectl("delete", "-n", namespace, "deployment", "sturdy", "--wait=false")
    wait_for("a new Deployment", lambda: exists(cp, namespace, "deployment", "sturdy")
             and deployment_of(cp, namespace, "sturdy")["metadata"]["uid"] != uid)
    wait_ready(cp, namespace, "sturdy")

    cp.kubectl("set", "image", "-n", namespace, "deployment/sturdy", "server=evil.example/server:latest")
    wait_for("the image restored", lambda: deployment_of(cp, namespace, "sturdy")["spec"]["template"]["spec"]
             ["containers"][0]["image"] == "registry.test/slimserve/server:test")

    cp.kubectl("delete", "-n", namespace, "service", "sturdy")
    wait_for("the Service restored", lambda: exists(cp, namespace, "service", "sturdy"))

    cp.kubectl("patch", "-n", namespace, "pdb", "sturdy", "--type=merge", "-p", '{"spec":{"maxUnavailable":0}}')
    wait_for("the PDB restored", lambda: get(cp, namespace, "pdb", "sturdy")["spec"].get("maxUnavailable") == 1)


def test_deleting_the_service_collects_its_children(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, model_service("brief", autoscaling={"metric": "cpu", "maxReplicas": 3}))
    wait_ready(cp, namespace, "brief")
    for kind in ("deployment", "service", "hpa", "pdb"):
        assert exists(cp, namespace, kind, "brief")
    cp.kubectl("delete", "-n", namespace, "msvc", "brief", "--wait=true", timeout=60)
    for kind in ("deployment", "service", "hpa", "pdb"):
        wait_for(f"the {kind} collected", lambda kind=kind: not exists(cp, namespace, kind, "brief"))
    wait_for("the pods gone", lambda: not pods_of(cp, namespace, "brief"))


def test_operator_restart_converges_without_duplicates(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, model_service("one", replicas=2), model_service("two", autoscaling={"metric": "cpu"}))
    wait_ready(cp, namespace, "one", "two")
    before = {d["metadata"]["name"]: d for d in get(cp, namespace, "deployments", "-l", SERVER_LABELS)["items"]}

    operator.stop()
    cp.kubectl("delete", "-n", namespace, "service", "one", "two")  # drift while the operator is away
    operator.start()
    # Each pass applies the Deployment before the Service: a restored Service means its Deployment was applied.
    for name in ("one", "two"):
        wait_for(f"Service {name} restored after the restart", lambda n=name: exists(cp, namespace, "service", n), 90)
    wait_ready(cp, namespace, "one", "two")

    after = {d["metadata"]["name"]: d for d in get(cp, namespace, "deployments", "-l", SERVER_LABELS)["items"]}
    assert sorted(after) == ["one", "two"]
    for name, deployment in after.items():
        assert deployment["metadata"]["uid"] == before[name]["metadata"]["uid"]
        assert deployment["metadata"]["generation"] == before[name]["metadata"]["generation"]
        assert len(replica_sets_of(cp, namespace, name)) == 1
    assert len(get(cp, namespace, "services", "-l", SERVER_LABELS)["items"]) == 2
    assert len(get(cp, namespace, "hpa", "-l", SERVER_LABELS)["items"]) == 1
