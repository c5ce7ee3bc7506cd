"""A CompressionJob's children and results on the real control plane (kwok nodes): a finished result stays as it
is whatever the operator restarts with, objects that are not its own are never taken over, every refused
apply reaches the status, and the compression pod is Guaranteed by default.

Waits end on what the operator is seen to do (its status writes, the Events Kopf posts once a handler has
run), never on a fixed sleep.
"""

from __future__ import annotations

import json

import pytest
import yaml

from slimserve.controller.builders.compression_job import POD_ANNOTATIONS_ANNOTATION
from slimserve.controller.compression_job_children import BLOCKED_RETRY_MAX_SECONDS, retry_delay
from slimserve.controller.config import OperatorConfig
from tests.cluster.controlplane import OUTCOME_ANNOTATION
from tests.cluster.helpers import SOLO_NAMESPACE_PREFIX, apply, condition, events_of, exists, get, wait_for
from tests.helm.chart import operator_config, render
from tests.operator.conftest import TEST_OPERATOR_CONFIG
from tests.operator.test_compression_job_cluster import compression_job, jobs_of, pods_of_job, sink_for, status_of

DIGEST = "sha256:" + "cd" * 32


def test_blocked_retries_wait_twice_as_long_each_time_up_to_a_cap():
    delays = [retry_delay(retry) for retry in range(12)]
    assert delays[:4] == [2, 4, 8, 16]
    assert all(later >= earlier for earlier, later in zip(delays, delays[1:]))
    assert max(delays) == BLOCKED_RETRY_MAX_SECONDS == retry_delay(10_000)


# ---- helpers ------------------------------------------------------------------------------------------


def wait_resumed(operator, times: int) -> None:
    """Until the operator's resume handlers have returned `times` times in all (Kopf logs each object's)."""
    wait_for(f"{times} resumes handled", lambda: operator.logs().count("Resuming is processed") >= times)


def wait_succeeded_reason(cp, namespace: str, name: str, status: str, reason: str, text: str = "") -> dict:
    def check():
        found = condition(status_of(cp, namespace, name), "Succeeded")
        matches = (found.get("status"), found.get("reason")) == (status, reason) and text in found.get("message", "")
        return matches and found

    return wait_for(f"{name}: Succeeded={status} {reason} {text!r}", check, timeout=90)


def untouched(cp, namespace: str, kind: str, name: str) -> tuple:
    """What an operator that takes an object over changes: its version, owners and field managers."""
    meta = get(cp, namespace, kind, name, "--show-managed-fields")["metadata"]
    return meta["resourceVersion"], meta.get("ownerReferences"), [entry["manager"] for entry in meta["managedFields"]]


# ---- a finished result is final -------------------------------------------------------------------------


@pytest.fixture
def solo_namespace(control_plane):
    """A namespace that only the operator the test starts acts in."""
    name = control_plane.create_namespace(f"{SOLO_NAMESPACE_PREFIX}final")
    yield name
    control_plane.delete_namespace(name)


@pytest.mark.cluster
def test_a_finished_generation_survives_restarts_with_another_configuration(control_plane, operator_factory, solo_namespace):
    cp, namespace = control_plane, solo_namespace
    own = operator_factory(extra_args=("--namespace", namespace))
    apply(cp, namespace, compression_job("final", outcome="run", nodePool="gpu"))
    wait_for("the compression pod running", lambda: status_of(cp, namespace, "final").get("phase") == "Running")
    sink_for(cp, namespace, "final").result(
        {"artifact": {"uri": "s3://artifacts/final", "digest": DIGEST, "sizeBytes": 1234}, "metrics": METRICS}
    )
    (pod,) = pods_of_job(cp, namespace, "final-g1")
    cp.kubectl("annotate", "-n", namespace, "pod", pod["metadata"]["name"], f"{OUTCOME_ANNOTATION}=succeed", "--overwrite")
    cp.kubectl("wait", "-n", namespace, "compressionjob/final", "--for=condition=Succeeded", "--timeout=60s")
    apply(cp, namespace, {
        "apiVersion": "slimserve.io/v1alpha1", "kind": "ModelService", "metadata": {"name": "served"},
        "spec": {"model": {"compressionJobRef": {"name": "final"}}},
    })
    cp.kubectl("wait", "-n", namespace, "--for=condition=Ready", "msvc/served", "--timeout=60s", timeout=70)
    finished = status_of(cp, namespace, "final")
    assert finished["phase"] == "Succeeded" and finished["artifact"]["digest"] == DIGEST
    job_uid = get(cp, namespace, "job", "final-g1")["metadata"]["uid"]
    served = get(cp, namespace, "modelservice", "served")["status"]
    assert served["modelDigest"] == DIGEST

    def assert_unchanged():
        assert status_of(cp, namespace, "final") == finished
        assert [job["metadata"]["uid"] for job in jobs_of(cp, namespace, "final")] == [job_uid]
        now = get(cp, namespace, "modelservice", "served")["status"]
        assert condition(now, "Ready") == condition(served, "Ready") and condition(now, "Ready")["status"] == "True"
        assert now["modelDigest"] == DIGEST

    # The pool the job ran on is gone, and its pod annotations no longer parse: neither concerns a finished run.
    without_gpu = {**TEST_OPERATOR_CONFIG, "nodePools": {"cpu": TEST_OPERATOR_CONFIG["nodePools"]["cpu"]}}
    own.config_path.write_text(yaml.safe_dump(without_gpu))
    cp.kubectl("annotate", "-n", namespace, "compressionjob/final", f"{POD_ANNOTATIONS_ANNOTATION}={{not json", "--overwrite")
    own.restart()
    wait_resumed(own, 2)  # both resources: the job and the service
    assert_unchanged()
    assert own.logs().count("generation 1 has finished (Succeeded); only a spec change runs it again") == 1

    # The pool is back: the same generation does not run again.
    own.config_path.write_text(yaml.safe_dump(TEST_OPERATOR_CONFIG))
    own.restart()
    wait_resumed(own, 4)
    assert_unchanged()


METRICS = {
    "baseline": {"sizeBytes": 4000, "parameters": 500, "latencyP50Ms": 1.0, "throughput": 900.0, "metric": 0.97},
    "compressed": {"sizeBytes": 1000, "parameters": 500, "latencyP50Ms": 1.0, "throughput": 900.0, "metric": 0.97},
    "sizeRatio": 4.0,
    "speedup": 1.0,
    "accuracyDelta": 0.0,
}


# ---- children are only ever its own ---------------------------------------------------------------------


@pytest.mark.cluster
def test_objects_of_its_childrens_names_that_are_not_its_own_are_left_alone_until_removed(
    control_plane, operator, namespace
):
    cp = control_plane
    keeper = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keeper"}}
    apply(cp, namespace, keeper)
    keeper_uid = get(cp, namespace, "configmap", "keeper")["metadata"]["uid"]
    hand_made_account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "clash-compressor"}}
    someone_elses_role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {
            "name": "clash-compressor",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "keeper", "uid": keeper_uid, "controller": True}
            ],
        },
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
    }
    apply(cp, namespace, hand_made_account, someone_elses_role)
    account_before = untouched(cp, namespace, "serviceaccount", "clash-compressor")
    role_before = untouched(cp, namespace, "role", "clash-compressor")

    apply(cp, namespace, compression_job("clash", outcome="run"))
    conflict = wait_succeeded_reason(cp, namespace, "clash", "False", "ChildConflict")
    assert conflict["message"].startswith(
        f"ServiceAccount {namespace}/clash-compressor exists and is controlled by no controller"
    )
    status = status_of(cp, namespace, "clash")
    assert status["phase"] == "Pending" and condition(status, "Stalled")["status"] == "True"
    assert condition(status, "Stalled")["reason"] == "ChildConflict"
    warnings = [(reason, message) for type_, reason, message in events_of(cp, namespace, "clash") if type_ == "Warning"]
    assert ("ChildConflict", conflict["message"]) in warnings
    assert untouched(cp, namespace, "serviceaccount", "clash-compressor") == account_before
    assert not exists(cp, namespace, "job", "clash-g1")

    # The account removed, the next try finds the Role: someone else's, and also left as it is.
    cp.kubectl("delete", "-n", namespace, "serviceaccount", "clash-compressor")
    conflict = wait_succeeded_reason(cp, namespace, "clash", "False", "ChildConflict", f"Role {namespace}/")
    assert conflict["message"] == (
        f"Role {namespace}/clash-compressor exists and is controlled by ConfigMap keeper (uid {keeper_uid})"
    )
    assert untouched(cp, namespace, "role", "clash-compressor") == role_before
    assert not exists(cp, namespace, "job", "clash-g1")

    # Both gone: it recovers on its own and runs.
    cp.kubectl("delete", "-n", namespace, "role", "clash-compressor")
    wait_for("clash running", lambda: status_of(cp, namespace, "clash").get("phase") == "Running", timeout=90)
    status = status_of(cp, namespace, "clash")
    assert condition(status, "Succeeded")["status"] == "Unknown" and condition(status, "Stalled")["status"] == "False"
    uid = get(cp, namespace, "compressionjob", "clash")["metadata"]["uid"]
    for kind, name in (("serviceaccount", "clash-compressor"), ("role", "clash-compressor"),
                       ("rolebinding", "clash-compressor"), ("job", "clash-g1")):
        owners = get(cp, namespace, kind, name)["metadata"]["ownerReferences"]
        assert [(ref["uid"], ref["controller"]) for ref in owners] == [(uid, True)], f"{kind} {name}: {owners}"


@pytest.mark.cluster
def test_a_job_of_its_name_made_by_hand_is_a_conflict_not_adopted(control_plane, operator, namespace):
    cp = control_plane
    hand_made = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "taken-g1"},
        "spec": {"template": {
            "metadata": {"annotations": {OUTCOME_ANNOTATION: "run"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "registry.test/noop:1"}]},
        }},
    }
    apply(cp, namespace, hand_made)
    before = get(cp, namespace, "job", "taken-g1")
    apply(cp, namespace, compression_job("taken", outcome="run"))
    conflict = wait_succeeded_reason(cp, namespace, "taken", "False", "ChildConflict")
    assert conflict["message"].startswith(f"Job {namespace}/taken-g1 exists and is controlled by no controller")
    _, owners, managers = untouched(cp, namespace, "job", "taken-g1")  # the Job controller writes its status
    assert owners is None and "slimserve-operator" not in managers
    assert get(cp, namespace, "job", "taken-g1")["spec"]["template"] == before["spec"]["template"]
    assert status_of(cp, namespace, "taken")["phase"] == "Pending"


# ---- every refused apply reaches the status -------------------------------------------------------------


@pytest.mark.cluster
def test_a_job_the_api_server_refuses_is_told_in_status_and_made_once_allowed(control_plane, operator, namespace):
    cp = control_plane
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-jobs"},
             "spec": {"hard": {"count/jobs.batch": "0"}}}
    apply(cp, namespace, quota)
    wait_for("the quota counted", lambda: get(cp, namespace, "resourcequota", "no-jobs").get("status", {}).get("hard"))

    apply(cp, namespace, compression_job("refused", outcome="run"))
    refused = wait_succeeded_reason(cp, namespace, "refused", "False", "ApplyFailed")
    assert refused["message"].startswith("Job refused-g1: ") and "exceeded quota: no-jobs" in refused["message"]
    status = status_of(cp, namespace, "refused")
    assert status["phase"] == "Pending" and status["jobName"] == "refused-g1"
    assert (condition(status, "Stalled")["status"], condition(status, "Stalled")["reason"]) == ("True", "ApplyFailed")
    warnings = [(reason, message) for type_, reason, message in events_of(cp, namespace, "refused") if type_ == "Warning"]
    assert ("ApplyFailed", refused["message"]) in warnings

    cp.kubectl("delete", "-n", namespace, "resourcequota", "no-jobs")
    wait_for("refused running", lambda: status_of(cp, namespace, "refused").get("phase") == "Running", timeout=90)
    status = status_of(cp, namespace, "refused")
    assert condition(status, "Succeeded")["reason"] == "Running" and condition(status, "Stalled")["status"] == "False"
    assert [job["metadata"]["name"] for job in jobs_of(cp, namespace, "refused")] == ["refused-g1"]


# ---- the compression pod's resources --------------------------------------------------------------------


@pytest.mark.cluster
def test_a_compression_pod_without_resources_in_its_spec_is_guaranteed(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, compression_job("sized", outcome="run"))
    wait_for("sized running", lambda: status_of(cp, namespace, "sized").get("phase") == "Running")
    (pod,) = pods_of_job(cp, namespace, "sized-g1")
    (container,) = pod["spec"]["containers"]
    guaranteed = {"cpu": "2", "memory": "4Gi"}  # the configuration's default (the test configuration sets none)
    assert container["resources"] == {"requests": guaranteed, "limits": guaranteed}
    assert pod["status"]["qosClass"] == "Guaranteed"  # as the API server classes the pod the Job made
    assert json.loads(container["env"][0]["value"]).get("resources") is None


def test_the_chart_configures_the_compression_pods_defaults():
    shipped = OperatorConfig.model_validate(operator_config(render()))
    assert shipped.compressor_resources == OperatorConfig().compressor_resources  # the chart's are the operator's
    assert shipped.compressor_resources.requests == shipped.compressor_resources.limits  # Guaranteed
    larger = {"requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"cpu": "8", "memory": "32Gi"}}
    configured = OperatorConfig.model_validate(operator_config(render({"workloads": {"compressorResources": larger}})))
    assert configured.compressor_resources.to_json() == larger
