"""examples/tiny-lm.yaml on the real control plane: the int4 CompressionJob of builtin://tiny-lm runs its pod with
the perplexity budget, and the ModelService chained to it serves the artifact once the job has written it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster.helpers import get, wait_for
from tests.operator.test_compression_job_cluster import example_running, pods_of_job, status_of
from tests.operator.test_model_service_cluster import pods_of, wait_condition, wait_ready

pytestmark = pytest.mark.cluster

EXAMPLE = Path(__file__).parents[2] / "examples" / "tiny-lm.yaml"
DIGEST = "sha256:" + "c3" * 32


def test_tiny_lm_example_compresses_within_a_perplexity_budget_and_serves_the_artifact(control_plane, operator, namespace):
    cp = control_plane
    # kwok runs no containers: the compression pod keeps running until this test writes its result
    example_running(cp, namespace, EXAMPLE)
    wait_condition(cp, namespace, "tiny-lm", "ModelAvailable", "False", "WaitingForCompression")

    (pod,) = pods_of_job(cp, namespace, "tiny-lm-int4-g1")
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    spec = json.loads(env["SLIMSERVE_JOB_SPEC"])
    assert spec["model"]["uri"] == "builtin://tiny-lm"
    assert spec["steps"] == [{"quantize": {"method": "int4-weight-only", "algorithm": "gptq", "calibrationSamples": 64}}]
    assert (spec["evaluation"]["metric"], spec["evaluation"]["maxRelativeIncrease"]) == ("perplexity", 0.06)
    assert spec["output"]["uri"] == "pvc://models/tiny-lm-int4"
    assert env["SLIMSERVE_DEVICE"] == "cpu"
    assert {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}["/mnt/pvc/models"] is False

    # what the compression pod writes when it is done: perplexity before and after, tokens per second
    def metrics(perplexity: float, tokens_per_second: float, size: int) -> dict:
        return {"sizeBytes": size, "parameters": 4_000_000, "latencyP50Ms": 5.0, "throughput": 100.0, "metric": perplexity,
                "metricName": "perplexity", "tokensPerSecond": tokens_per_second}

    status = {
        "phase": "Succeeded",
        "artifact": {"uri": "pvc://models/tiny-lm-int4", "digest": DIGEST, "sizeBytes": 4_000_000, "format": "slimserve/v1"},
        "metrics": {"baseline": metrics(8.0, 100.0, 16_000_000), "compressed": metrics(8.3, 180.0, 4_000_000),
                    "sizeRatio": 4.0, "speedup": 1.8, "accuracyDelta": 0.3},
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "Completed", "message": "artifact written",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }
    cp.kubectl("patch", "-n", namespace, "compressionjob", "tiny-lm-int4", "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": status}))
    stored = status_of(cp, namespace, "tiny-lm-int4")["metrics"]
    assert (stored["compressed"]["metricName"], stored["compressed"]["tokensPerSecond"]) == ("perplexity", 180.0)

    wait_ready(cp, namespace, "tiny-lm")
    wait_for("the server pod", lambda: pods_of(cp, namespace, "tiny-lm"))
    (server,) = pods_of(cp, namespace, "tiny-lm")
    (container,) = server["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SLIMSERVE_ARTIFACT"] == "pvc://models/tiny-lm-int4"
    assert {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}["/mnt/pvc/models"] is True
    assert get(cp, namespace, "modelservice", "tiny-lm")["status"]["modelDigest"] == DIGEST
