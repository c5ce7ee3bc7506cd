"""CompressionJob, ModelService and BatchInference objects in each state that GitOps tools must tell apart.

The statuses come from the operator's own pure status functions (`compression_job_status`,
`model_service_status`, `batch_inference_status`), so the health checks are tested against what the operator
really writes; `test_batch_inference_live.py` checks the BatchInference ones against the operator's live writes.
Each fixture is (object, the Argo CD health it must get, the kstatus status it must get).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from slimserve.api import API_VERSION
from slimserve.controller import batch_inference_status as bi_status
from slimserve.controller import compression_job_status as cj_status
from slimserve.controller import model_service_status as ms_status
from slimserve.controller.builders.model_service import Owner

DIGEST = "sha256:" + "ab" * 32
ARTIFACT = {"uri": "pvc://models/digits-slim", "digest": DIGEST, "sizeBytes": 123456, "format": "slimserve/v1"}


@dataclass(frozen=True)
class Fixture:
    name: str
    obj: dict[str, Any]
    argocd: str  # Healthy | Progressing | Degraded
    kstatus: str | None  # Current | InProgress | Failed; None where kstatus cannot know (see its README)
    message: str = ""  # a fragment the Argo CD message must contain


def _object(kind: str, name: str, status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    """A resource carrying (a copy of) `status`; a later `generation` makes that status stale."""
    obj = {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": "ml", "generation": generation, "uid": f"uid-{name}"},
        "spec": {},
    }
    if status is not None:
        obj["status"] = copy.deepcopy(status)
    return obj


def _merge(status: dict[str, Any] | None, patch: dict[str, Any] | None) -> dict[str, Any]:
    """`patch` applied to `status` as the API server applies a merge patch (RFC 7386): None deletes."""
    merged = dict(status or {})
    for key, value in (patch or {}).items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ---- CompressionJob -------------------------------------------------------------------------------------


def _job(generation: int, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": f"digits-slim-g{generation}"}, "status": status}


def _cj_from_job(status: dict[str, Any], job: dict[str, Any], failed_pod: dict[str, Any] | None = None) -> dict[str, Any]:
    obj = _object("CompressionJob", "digits-slim", status)
    patch = cj_status.status_from_job(obj, job, generation=1, failed_pod=lambda: failed_pod)
    return _merge(status, patch)


def compression_job_fixtures() -> list[Fixture]:
    pending = _merge(None, cj_status.pending_status(None, generation=1, job_name="digits-slim-g1"))
    running = _cj_from_job(pending, _job(1, ready=1, active=1, startTime="2026-01-01T00:00:00Z"))
    with_progress = {**running, "progress": {"step": "prune/structured", "stepIndex": 0, "stepsTotal": 3, "fraction": 0.4}}
    complete = {"conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:05:00Z"}]}
    succeeded = _cj_from_job({**running, "artifact": ARTIFACT}, _job(1, succeeded=1, **complete))
    no_artifact = _cj_from_job(running, _job(1, succeeded=1, **complete))
    failed_condition = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit"}
    pod = {
        "metadata": {"name": "digits-slim-g1-x7k2p"},
        "status": {"containerStatuses": [{"state": {"terminated": {
            "reason": "Error", "exitCode": 3, "message": "BudgetExceeded: accuracy fell 3.1 points, budget 1"}}}]},
    }
    failed = _cj_from_job(running, _job(1, failed=1, conditions=[failed_condition]), failed_pod=pod)
    invalid = _merge(None, cj_status.invalid_status(
        None, generation=1, message="spec.nodePool: unknown node pool 'tpu' (known: cpu, gpu)"))
    cj = functools.partial(_object, "CompressionJob")
    return [
        Fixture("new", cj("new", None), "Progressing", None, "Waiting for the operator"),
        Fixture("pending", cj("pending", pending), "Progressing", "InProgress", "Pending"),
        Fixture("running", cj("running", running), "Progressing", "InProgress", "Running"),
        Fixture("running-progress", cj("running-progress", with_progress), "Progressing", "InProgress",
                "prune/structured (40%)"),
        Fixture("succeeded", cj("succeeded", succeeded), "Healthy", "Current", DIGEST),
        Fixture("failed", cj("failed", failed), "Degraded", "Failed", "BudgetExceeded"),
        Fixture("artifact-missing", cj("artifact-missing", no_artifact), "Degraded", "Failed", "ArtifactMissing"),
        Fixture("invalid", cj("invalid", invalid), "Degraded", "Failed", "unknown node pool 'tpu'"),
        # The spec changed (generation 2) and the operator has not acted yet: the old verdict does not count.
        Fixture("stale-succeeded", cj("stale-succeeded", succeeded, generation=2), "Progressing", "InProgress",
                "generation 2"),
        Fixture("stale-failed", cj("stale-failed", failed, generation=2), "Progressing", "InProgress", "generation 2"),
    ]


# ---- ModelService ---------------------------------------------------------------------------------------

OWNER = Owner(name="digits", namespace="ml", uid="uid-digits")


def _deployment(*, desired: int, updated: int, available: int, ready: int, deadline_exceeded: bool = False) -> dict:
    conditions = []
    if deadline_exceeded:
        conditions.append({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                           "message": 'ReplicaSet "digits-5f7d" has timed out progressing.'})
    return {
        "metadata": {"generation": 1},
        "spec": {"replicas": desired},
        "status": {"observedGeneration": 1, "replicas": updated, "updatedReplicas": updated,
                   "availableReplicas": available, "readyReplicas": ready, "conditions": conditions},
    }


def _ms_status(resolution: ms_status.ModelResolution, deployment: dict | None, autoscaling=None) -> dict[str, Any]:
    inputs = ms_status.inputs_for(OWNER, 1, resolution, autoscaling, "cluster.local")
    rollout = ms_status.evaluate_rollout(deployment) if deployment is not None else None
    return ms_status.compose_status(None, inputs, rollout)


def model_service_fixtures() -> list[Fixture]:
    uri = ms_status.resolve_model_uri("pvc://models/digits-slim")
    running_job = {"status": {"phase": "Running", "conditions": [{"type": "Succeeded", "status": "Unknown"}]}}
    failed_job = {"status": {"phase": "Failed", "conditions": [
        {"type": "Succeeded", "status": "False", "reason": "BudgetExceeded", "message": "accuracy fell 3.1 points"}]}}
    ready = _ms_status(uri, _deployment(desired=2, updated=2, available=2, ready=2))
    zero = _ms_status(uri, _deployment(desired=0, updated=0, available=0, ready=0),
                      ms_status.autoscaling_verdict("concurrency", keda_installed=True))
    rolling = _ms_status(uri, _deployment(desired=2, updated=1, available=1, ready=1))
    stuck = _ms_status(uri, _deployment(desired=2, updated=2, available=0, ready=0, deadline_exceeded=True))
    waiting = _ms_status(ms_status.resolve_compression_job("digits-slim", running_job), None)
    missing_job = _ms_status(ms_status.resolve_compression_job("digits-slim", None), None)
    job_failed = _ms_status(ms_status.resolve_compression_job("digits-slim", failed_job), None)
    invalid = ms_status.invalid_status(None, 1, "InvalidSpec", "spec.model.uri: not a SlimServe artifact")
    unknown_pool = ms_status.invalid_status(None, 1, "UnknownNodePool", "spec.nodePool: unknown node pool 'tpu'")
    ms = functools.partial(_object, "ModelService")
    return [
        Fixture("new", ms("new", None), "Progressing", None, "Waiting for the operator"),
        Fixture("ready", ms("ready", ready), "Healthy", "Current", "http://digits.ml.svc.cluster.local"),
        Fixture("scaled-to-zero", ms("scaled-to-zero", zero), "Healthy", "Current", "ScaledToZero"),
        Fixture("rolling-out", ms("rolling-out", rolling), "Progressing", "InProgress", "RollingOut"),
        Fixture("waiting-for-compression", ms("waiting-for-compression", waiting), "Progressing", "InProgress",
                "WaitingForCompression"),
        # The CompressionJob may still be created: not a failure of the service.
        Fixture("compression-job-missing", ms("compression-job-missing", missing_job), "Progressing", "InProgress",
                "CompressionJobNotFound"),
        Fixture("compression-failed", ms("compression-failed", job_failed), "Degraded", "Failed", "CompressionFailed"),
        Fixture("deadline-exceeded", ms("deadline-exceeded", stuck), "Degraded", "Failed", "ProgressDeadlineExceeded"),
        Fixture("invalid", ms("invalid", invalid), "Degraded", "Failed", "InvalidSpec"),
        Fixture("unknown-node-pool", ms("unknown-node-pool", unknown_pool), "Degraded", "Failed",
                "unknown node pool 'tpu'"),
        Fixture("stale-ready", ms("stale-ready", ready, generation=2), "Progressing", "InProgress", "generation 2"),
    ]


# ---- BatchInference -------------------------------------------------------------------------------------

BATCH_JOB = "embed-batch-g1"
BATCH_MODEL = "builtin://minilm-l6"
MANIFEST = {"uri": "s3://results/embed/_manifest.json", "digest": DIGEST}
BATCH_STARTED = "2026-01-01T00:00:00Z"


def _batch_job(*, completions: int, active: int = 0, completed: str = "", failed: str = "",
               conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    status = {"startTime": BATCH_STARTED, "active": active, "ready": active, "completedIndexes": completed,
              "failedIndexes": failed, "succeeded": len(bi_status.parse_indexes(completed)),
              "failed": len(bi_status.parse_indexes(failed)), "conditions": conditions or []}
    return {"metadata": {"name": BATCH_JOB}, "spec": {"completions": completions}, "status": status}


def _shard(state: str, done: int, total: int = 100, **extra: Any) -> dict[str, Any]:
    return {"generation": 1, "state": state, "recordsDone": done, "recordsTotal": total, **extra}


def _binf_from_job(status: dict[str, Any], job: dict[str, Any], reports: dict[str, dict[str, Any]] | None = None,
                   failed_pods: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The status after the shards' own reports (their pods' patches) and then the Job's event."""
    status = _merge(status, {"shardProgress": reports} if reports else None)
    obj = _object("BatchInference", "embed", status)
    patch = bi_status.status_from_job(obj, job, generation=1, failed_pods=lambda: failed_pods or {},
                                      now=datetime(2026, 1, 1, 0, 1, tzinfo=timezone.utc))
    return _merge(status, patch)


def batch_inference_fixtures() -> list[Fixture]:
    def pending_for(shards: int) -> dict[str, Any]:
        return _merge(None, bi_status.pending_status(None, generation=1, job_name=BATCH_JOB, shards=shards,
                                                     model_uri=BATCH_MODEL, model_digest=None))

    pending = pending_for(3)
    running = _binf_from_job(pending, _batch_job(completions=3, active=3),
                             {str(i): _shard("Running", 10 * i) for i in range(3)})
    parts = {str(i): _shard("Succeeded", 100, **({"manifest": MANIFEST} if i == 2 else {})) for i in range(3)}
    complete = [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:30Z"}]
    succeeded = _binf_from_job(running, _batch_job(completions=3, completed="0-2", conditions=complete), parts)
    no_manifest = _binf_from_job(running, _batch_job(completions=3, completed="0-2", conditions=complete),
                                 {str(i): _shard("Succeeded", 100) for i in range(3)})
    # Two shards, spec.maxFailedShards 0: index 1 crashes (its pod reports nothing) and the Job fails.
    over_limit = {"type": "Failed", "status": "True", "reason": "MaxFailedIndexesExceeded",
                  "message": "Job has exceeded the specified maximal number of failed indexes",
                  "lastTransitionTime": "2026-01-01T00:00:20Z"}
    crashed = {"metadata": {"name": f"{BATCH_JOB}-1-x7k2p"}, "status": {"containerStatuses": [{"state": {
        "terminated": {"reason": "OOMKilled", "exitCode": 137, "message": ""}}}]}}
    shards_failed = _binf_from_job(pending_for(2), _batch_job(completions=2, completed="0", failed="1",
                                                              conditions=[over_limit]),
                                   {"0": _shard("Succeeded", 100)}, failed_pods={1: crashed})
    deadline = {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                "message": "Job was active longer than specified deadline", "lastTransitionTime": "2026-01-01T01:00:00Z"}
    past_deadline = _binf_from_job(running, _batch_job(completions=3, conditions=[deadline]))

    def chained(compression_job: dict[str, Any] | None) -> dict[str, Any]:
        verdict = ms_status.resolve_compression_job("minilm-slim", compression_job).verdict
        derive = bi_status.waiting_for_model_status if verdict.reason == "WaitingForCompression" else functools.partial(
            bi_status.blocked_status, job_name=None)
        return _merge(None, derive(None, generation=1, reason=verdict.reason, message=verdict.message))

    compressing = chained({"status": {"phase": "Running", "conditions": [{"type": "Succeeded", "status": "Unknown"}]}})
    compression_failed = chained({"status": {"phase": "Failed", "conditions": [
        {"type": "Succeeded", "status": "False", "reason": "BudgetExceeded", "message": "accuracy fell 3.1 points"}]}})
    compression_missing = chained(None)
    conflict = _merge(pending, bi_status.blocked_status(
        pending, generation=1, job_name=BATCH_JOB, reason="ChildConflict",
        message="ServiceAccount embed-batch exists and is not controlled by this BatchInference"))
    invalid = _merge(None, bi_status.invalid_status(
        None, generation=1, message="spec.nodePool: unknown node pool 'tpu' (known: cpu, gpu)"))
    binf = functools.partial(_object, "BatchInference")
    return [
        Fixture("new", binf("new", None), "Progressing", None, "Waiting for the operator"),
        Fixture("pending", binf("pending", pending), "Progressing", "InProgress", f"waiting for Job {BATCH_JOB}"),
        Fixture("running", binf("running", running), "Progressing", "InProgress",
                "0 of 3 shards done, 3 running, 0 failed (30/300 records)"),
        Fixture("waiting-for-compression", binf("waiting-for-compression", compressing), "Progressing", "InProgress",
                "WaitingForCompression"),
        Fixture("succeeded", binf("succeeded", succeeded), "Healthy", "Current", f"manifest {MANIFEST['uri']} ({DIGEST})"),
        Fixture("shards-failed", binf("shards-failed", shards_failed), "Degraded", "Failed",
                "shard 1: pod embed-batch-g1-1-x7k2p: OOMKilled, exit code 137"),
        Fixture("deadline-exceeded", binf("deadline-exceeded", past_deadline), "Degraded", "Failed", "DeadlineExceeded"),
        Fixture("manifest-missing", binf("manifest-missing", no_manifest), "Degraded", "Failed", "ManifestMissing"),
        # Held up until someone acts: kstatus reads the Stalled condition the operator writes as Failed.
        Fixture("compression-failed", binf("compression-failed", compression_failed), "Degraded", "Failed",
                "CompressionFailed: CompressionJob 'minilm-slim' failed: accuracy fell 3.1 points"),
        Fixture("compression-job-missing", binf("compression-job-missing", compression_missing), "Degraded", "Failed",
                "CompressionJobNotFound"),
        Fixture("child-conflict", binf("child-conflict", conflict), "Degraded", "Failed", "ChildConflict"),
        Fixture("invalid", binf("invalid", invalid), "Degraded", "Failed", "unknown node pool 'tpu'"),
        # The spec changed (generation 2) and the operator has not acted yet: the old verdict does not count.
        Fixture("stale-running", binf("stale-running", running, generation=2), "Progressing", "InProgress",
                "generation 2"),
        Fixture("stale-succeeded", binf("stale-succeeded", succeeded, generation=2), "Progressing", "InProgress",
                "generation 2"),
        Fixture("stale-failed", binf("stale-failed", shards_failed, generation=2), "Progressing", "InProgress",
                "generation 2"),
    ]
