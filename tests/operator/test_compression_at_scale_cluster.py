"""Compression at scale on the API server: a ModelService chained to a CompressionJob whose artifact missed its
accuracy budget (onBudgetMiss keepBest) is not served until the service allows it; a compression pod ended by
a disruption is replaced without counting as a failure (the new one resumes from the checkpoint); the pod's
progress keeps its time left and resume point in the status."""

from __future__ import annotations

import json

import pytest

from tests.cluster.helpers import apply, condition, exists, get, wait_for
from tests.operator.test_model_service_cluster import (
    DIGEST_A,
    compression_job,
    deployment_of,
    model_service,
    status_of,
    wait_condition,
)

pytestmark = pytest.mark.cluster

FIGURES = {"sizeBytes": 1000, "parameters": 10, "latencyP50Ms": 1.0, "throughput": 100.0, "metric": 0.9}


def succeed_outside_budget(cp, namespace: str, job: str) -> None:
    """What the compression pod writes when keepBest kept a candidate outside the budget."""
    status = {
        "phase": "Succeeded",
        "artifact": {"uri": f"s3://artifacts/{job}", "digest": DIGEST_A, "sizeBytes": 1234, "format": "slimserve/v1"},
        "metrics": {"baseline": FIGURES, "compressed": {**FIGURES, "metric": 0.5}, "sizeRatio": 1.0, "speedup": 1.0,
                    "accuracyDelta": -0.4, "withinBudget": False},
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "Completed", "message": "artifact written",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }
    cp.kubectl("patch", "-n", namespace, "compressionjob", job, "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": status}))


def test_an_artifact_outside_its_budget_is_served_only_when_the_service_allows_it(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, compression_job("best-effort"))
    apply(cp, namespace, model_service("strict", model={"compressionJobRef": {"name": "best-effort"}}))
    # The operator's own status writes for the running job come first (as in the pod's life).
    wait_for("the service's pass over the running job", lambda: "(phase Running)" in condition(
        status_of(cp, namespace, "strict"), "ModelAvailable").get("message", ""))
    succeed_outside_budget(cp, namespace, "best-effort")
    refused = wait_condition(cp, namespace, "strict", "ModelAvailable", "False", "OutsideBudget")
    assert "allowOutsideBudget" in refused["message"] and "best-effort" in refused["message"]
    assert condition(status_of(cp, namespace, "strict"), "Ready")["status"] == "False"
    assert not exists(cp, namespace, "deployment", "strict")

    cp.kubectl("patch", "-n", namespace, "msvc", "strict", "--type=merge", "-p",
               json.dumps({"spec": {"model": {"allowOutsideBudget": True}}}))
    wait_condition(cp, namespace, "strict", "ModelAvailable", "True", "CompressionSucceeded")
    env = wait_for("the server Deployment", lambda: exists(cp, namespace, "deployment", "strict") and deployment_of(
        cp, namespace, "strict")["spec"]["template"]["spec"]["containers"][0]["env"])
    assert {"name": "SLIMSERVE_ALLOW_OUTSIDE_BUDGET", "value": "true"} in env


def test_a_disrupted_compression_pod_is_replaced_without_counting_against_backoff_limit(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, compression_job("evictable"))
    wait_for("the compression Job", lambda: exists(cp, namespace, "job", "evictable-g1"))
    job = get(cp, namespace, "job", "evictable-g1")
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["podFailurePolicy"]["rules"] == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]


def test_the_pods_progress_with_its_time_left_and_resume_point_reaches_the_status(control_plane, operator, namespace):
    from slimserve.api.compression_job import Progress
    from tests.operator.test_compression_job_cluster import compression_job as job_manifest
    from tests.operator.test_compression_job_cluster import running, sink_for
    from tests.operator.test_compression_job_cluster import status_of as job_status

    cp = control_plane
    running(cp, namespace, job_manifest("resumed", outcome="run"))
    event = Progress(step="quantize/int8-dynamic", step_index=2, steps_total=4, fraction=0.6, message="trying",
                     step_fraction=0.2, step_eta_seconds=40.0, eta_seconds=95.5, resumed_from="spec.steps[0] prune/structured")
    sink_for(cp, namespace, "resumed", min_interval_seconds=0).progress(event)
    progress = wait_for("the progress write", lambda: job_status(cp, namespace, "resumed").get("progress"))
    assert progress == event.to_json()  # nothing pruned by the CRD's schema
    assert progress["resumedFrom"] == "spec.steps[0] prune/structured" and progress["etaSeconds"] == 95.5
