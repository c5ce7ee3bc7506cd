"""A CompressionJob's status, derived from its Job: pure functions, no API calls.

The operator owns `phase`, `conditions`, `jobName`, `startTime`, `completionTime` and `observedGeneration`;
the compression pod owns `progress`, `artifact` and `metrics` (see `slimserve.compression.status_sink`).
Each function returns a merge patch of the status (None deletes a field), or None when nothing changes; what
a BatchInference's status derives alike is in `job_status`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from slimserve.controller.conditions import FALSE, TRUE, UNKNOWN, find_condition, set_condition
from slimserve.controller.job_status import (
    FINAL_PHASES,
    MESSAGE_LIMIT,
    STARTED,
    SUCCEEDED,
    JobRun,
    StatusPatch,
    changed_fields,
    has_started,
    job_condition,
    terminated_state,
    termination_detail,
    with_kstatus_conditions,
)

RUN = JobRun(fields=("progress", "artifact", "metrics", "startTime", "completionTime"), pod="the compression pod")
# The compressor's termination message may start with a CamelCase reason: "BudgetExceeded: accuracy fell 3.1 points".
_REASON_PREFIX = re.compile(r"^([A-Z][A-Za-z0-9]{2,63}): (.+)$", re.DOTALL)


def pending_status(status: dict[str, Any] | None, *, generation: int, job_name: str) -> StatusPatch | None:
    """A new generation starts: the previous run's progress, artifact and metrics are dropped."""
    status = status or {}
    if status.get("observedGeneration") == generation and status.get("phase") not in (None, "Invalid"):
        return None  # already started (a retried or resumed reconcile), or held up (see `unblocked_status`)
    return {**RUN.waiting_for_job(status, generation, job_name), **RUN.cleared()}


unblocked_status = RUN.unblocked_status
invalid_status = RUN.invalid_status
blocked_status = RUN.blocked_status


def status_from_job(
    compression_job: dict[str, Any],
    job: dict[str, Any],
    *,
    generation: int,
    failed_pod: Callable[[], dict[str, Any] | None],
    deleted: bool = False,
) -> StatusPatch | None:
    """The status that `job` (of `generation`) implies; `failed_pod` is asked only when the Job failed."""
    meta = compression_job.get("metadata", {})
    status = compression_job.get("status") or {}
    if meta.get("generation") != generation or status.get("observedGeneration") != generation:
        return None  # the Job of an older generation, or a reconcile that has not started this one yet
    if status.get("jobName") != job["metadata"]["name"] or status.get("phase") == "Invalid":
        return None
    if status.get("phase") in FINAL_PHASES:
        return None  # a finished run is never rewritten
    job_status = job.get("status") or {}
    conditions = status.get("conditions")
    started = has_started(job_status) or (find_condition(conditions, STARTED) or {}).get("status") == TRUE
    patch: StatusPatch = {}
    if started:
        conditions = set_condition(
            conditions, STARTED, TRUE, "PodStarted", f"{RUN.pod} has started", generation=generation
        )
        patch["startTime"] = status.get("startTime") or job_status.get("startTime")

    complete = job_condition(job_status, "Complete")
    failed = job_condition(job_status, "Failed")
    if complete is not None:
        artifact = status.get("artifact")
        if artifact:
            message = f"artifact {artifact.get('uri')} ({artifact.get('digest')})"
            conditions = set_condition(conditions, SUCCEEDED, TRUE, "Completed", message, generation=generation)
            patch["phase"] = "Succeeded"
        else:
            message = "the compression Job completed but its pod reported no artifact"
            conditions = set_condition(conditions, SUCCEEDED, FALSE, "ArtifactMissing", message, generation=generation)
            patch["phase"] = "Failed"
        patch["completionTime"] = job_status.get("completionTime") or complete.get("lastTransitionTime")
    elif failed is not None:
        reason, message = failure_reason(failed, failed_pod())
        conditions = set_condition(conditions, SUCCEEDED, FALSE, reason, message, generation=generation)
        patch["phase"] = "Failed"
        patch["completionTime"] = failed.get("lastTransitionTime")
    elif deleted:
        message = f"Job {job['metadata']['name']} was deleted before it finished"
        conditions = set_condition(conditions, SUCCEEDED, FALSE, "JobDeleted", message, generation=generation)
        patch["phase"] = "Failed"
    elif started:
        conditions = set_condition(
            conditions, SUCCEEDED, UNKNOWN, "Running", f"{RUN.pod} is running", generation=generation
        )
        patch["phase"] = "Running"
    patch["conditions"] = with_kstatus_conditions(conditions, patch.get("phase", status.get("phase")), generation)
    return changed_fields(status, patch)


def failure_reason(failed_condition: dict[str, Any], pod: dict[str, Any] | None) -> tuple[str, str]:
    """(reason, message) of a failed Job: the compressor's own reason when it gave one, the pod's details."""
    job_reason = failed_condition.get("reason") or ""
    reason = "DeadlineExceeded" if job_reason == "DeadlineExceeded" else "JobFailed"
    parts = [failed_condition.get("message") or job_reason or "the Job failed"]
    terminated = terminated_state(pod)
    if pod is not None and terminated is not None:
        text = (terminated.get("message") or "").strip()
        match = _REASON_PREFIX.match(text)
        if match and reason == "JobFailed":
            reason, text = match.group(1), match.group(2)
        parts.append(termination_detail(pod, terminated, text))
    message = "; ".join(parts)
    return reason, message[:MESSAGE_LIMIT]
