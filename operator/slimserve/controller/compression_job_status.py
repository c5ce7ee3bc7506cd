"""A CompressionJob's status, derived from its Job: pure functions, no API calls.

The operator owns `phase`, `conditions`, `jobName`, `startTime`, `completionTime` and `observedGeneration`;
the compression pod owns `progress`, `artifact` and `metrics` (see `slimserve.compression.status_sink`).
Each function returns a merge patch of the status (None deletes a field), or None when nothing changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from slimserve.controller.conditions import FALSE, TRUE, UNKNOWN, condition_changed, find_condition, set_condition

STARTED = "Started"
SUCCEEDED = "Succeeded"
# kstatus (Flux, kpt) knows nothing of Succeeded: it reads Reconciling=True as in progress and Stalled=True as
# failed for good. Both are derived from the phase, in `with_kstatus_conditions`.
RECONCILING = "Reconciling"
STALLED = "Stalled"
IN_PROGRESS_PHASES = ("Pending", "Running")
STALLED_PHASES = ("Failed", "Invalid")
FINAL_PHASES = ("Succeeded", "Failed")
# Fields of one run: cleared when a new generation starts.
_RUN_FIELDS = ("progress", "artifact", "metrics", "startTime", "completionTime")
# The compressor's termination message may start with a CamelCase reason: "BudgetExceeded: accuracy fell 3.1 points".
_REASON_PREFIX = re.compile(r"^([A-Z][A-Za-z0-9]{2,63}): (.+)$", re.DOTALL)
MESSAGE_LIMIT = 2048

StatusPatch = dict[str, Any]


def is_finished(status: dict[str, Any] | None, generation: int) -> bool:
    """Has this generation already run to its end (so an operator restart or a label edit must not re-run it)?"""
    status = status or {}
    return status.get("observedGeneration") == generation and status.get("phase") in FINAL_PHASES


def pending_status(status: dict[str, Any] | None, *, generation: int, job_name: str) -> StatusPatch | None:
    """A new generation starts: the previous run's progress, artifact and metrics are dropped."""
    status = status or {}
    if status.get("observedGeneration") == generation and status.get("phase") not in (None, "Invalid"):
        return None  # already started (a retried or resumed reconcile), or held up (see `unblocked_status`)
    return {**_waiting_for_job(status, generation, job_name), **{field: None for field in _RUN_FIELDS}}


def unblocked_status(status: dict[str, Any] | None, *, generation: int, job_name: str) -> StatusPatch | None:
    """What held the generation up is gone and its Job exists: plain Pending again, the Job's events go on."""
    status = status or {}
    if status.get("observedGeneration") != generation or not is_blocked(status):
        return None
    return _waiting_for_job(status, generation, job_name)


def _waiting_for_job(status: dict[str, Any], generation: int, job_name: str) -> StatusPatch:
    conditions = status.get("conditions")
    conditions = set_condition(
        conditions, STARTED, FALSE, "Pending", "waiting for the compression pod to start", generation=generation
    )
    conditions = set_condition(
        conditions, SUCCEEDED, UNKNOWN, "Pending", f"waiting for Job {job_name}", generation=generation
    )
    conditions = with_kstatus_conditions(conditions, "Pending", generation)
    return {"observedGeneration": generation, "phase": "Pending", "jobName": job_name, "conditions": conditions}


def invalid_status(status: dict[str, Any] | None, *, generation: int, message: str) -> StatusPatch | None:
    """The spec cannot run: no Job, and the reason in the Succeeded condition."""
    return _not_running(status, generation, phase="Invalid", job_name=None, reason="InvalidSpec", message=message)


def blocked_status(
    status: dict[str, Any] | None, *, generation: int, job_name: str, reason: str, message: str
) -> StatusPatch | None:
    """The generation's Job, or the pod's access, cannot be made yet (another's object in the way, an apply the
    API server refused): still Pending and retried, but Succeeded=False and Stalled=True name the cause until
    it is gone, since waiting alone does not fix it. The status speaks of this generation and its Job from
    here on, so the Job may be created as soon as the cause is gone."""
    return _not_running(status, generation, phase="Pending", job_name=job_name, reason=reason, message=message)


def is_blocked(status: dict[str, Any] | None) -> bool:
    """Pending, but held up by a cause `blocked_status` reported."""
    status = status or {}
    return _held_up(status.get("phase"), status.get("conditions"))


def _held_up(phase: str | None, conditions: list[dict[str, Any]] | None) -> bool:
    return phase == "Pending" and (find_condition(conditions, SUCCEEDED) or {}).get("status") == FALSE


def _not_running(
    status: dict[str, Any] | None, generation: int, *, phase: str, job_name: str | None, reason: str, message: str
) -> StatusPatch | None:
    status = status or {}
    message = message[:MESSAGE_LIMIT]
    conditions = set_condition(status.get("conditions"), STARTED, FALSE, reason, message, generation=generation)
    conditions = set_condition(conditions, SUCCEEDED, FALSE, reason, message, generation=generation)
    conditions = with_kstatus_conditions(conditions, phase, generation)
    patch = {
        "observedGeneration": generation,
        "phase": phase,
        "jobName": job_name,
        "conditions": conditions,
        **{field: None for field in _RUN_FIELDS},
    }
    return changed_fields(status, patch)


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
            conditions, STARTED, TRUE, "PodStarted", "the compression pod has started", generation=generation
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
            conditions, SUCCEEDED, UNKNOWN, "Running", "the compression pod is running", generation=generation
        )
        patch["phase"] = "Running"
    patch["conditions"] = with_kstatus_conditions(conditions, patch.get("phase", status.get("phase")), generation)
    return changed_fields(status, patch)


def may_change_status(job: dict[str, Any], *, deleted: bool = False) -> bool:
    """False for a Job whose pod has not started yet: its status implies nothing new (saves a read per event)."""
    job_status = job.get("status") or {}
    finished = job_condition(job_status, "Complete") or job_condition(job_status, "Failed")
    return deleted or bool(finished) or has_started(job_status)


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
        detail = f"pod {pod['metadata']['name']}: {terminated.get('reason') or 'Terminated'}"
        detail += f", exit code {terminated.get('exitCode')}"
        parts.append(f"{detail}: {text}" if text else detail)
    message = "; ".join(parts)
    return reason, message[:MESSAGE_LIMIT]


def condition_change_events(before: list[dict[str, Any]] | None, after: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    """Kubernetes Events for the conditions that changed status or reason: kwargs of `kopf.event`.

    Every change of Succeeded (Pending, Running, Completed, the failure reasons) and Started becoming True.
    """
    events = []
    for type_ in (STARTED, SUCCEEDED):
        if after is None or not condition_changed(before, after, type_):
            continue
        condition = find_condition(after, type_)
        if type_ == STARTED and condition["status"] != TRUE:
            continue  # a run that has not started yet is told by Succeeded's Pending event
        failed = type_ == SUCCEEDED and condition["status"] == FALSE
        events.append(
            {
                "type": "Warning" if failed else "Normal",
                "reason": condition["reason"],
                "message": condition["message"] or f"{type_} is {condition['status']}",
            }
        )
    return events


def with_kstatus_conditions(conditions: list[dict[str, Any]], phase: str | None, generation: int) -> list[dict[str, Any]]:
    """Reconciling and Stalled follow the phase (a Pending run that Succeeded=False holds up is stalled);
    their reason and message repeat Succeeded's."""
    succeeded = find_condition(conditions, SUCCEEDED) or {}
    reason, message = succeeded.get("reason") or "Pending", succeeded.get("message", "")
    held_up = _held_up(phase, conditions)
    in_progress = phase in IN_PROGRESS_PHASES and not held_up
    stalled = phase in STALLED_PHASES or held_up
    conditions = set_condition(
        conditions, RECONCILING, TRUE if in_progress else FALSE, "Finished" if not (in_progress or held_up) else reason,
        message if in_progress else "", generation=generation,
    )
    return set_condition(
        conditions, STALLED, TRUE if stalled else FALSE, reason if stalled else "NotStalled",
        message if stalled else "", generation=generation,
    )


def has_started(job_status: dict[str, Any]) -> bool:
    return any(job_status.get(count) for count in ("ready", "succeeded", "failed"))


def job_condition(job_status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    condition = find_condition(job_status.get("conditions"), type_)
    return condition if condition and condition.get("status") == TRUE else None


def terminated_state(pod: dict[str, Any] | None) -> dict[str, Any] | None:
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    for container in statuses:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            return terminated
    return None


def changed_fields(status: dict[str, Any], patch: StatusPatch) -> StatusPatch | None:
    """Only the fields that differ from `status`; None when there are none."""
    changed = {key: value for key, value in patch.items() if status.get(key) != value}
    return changed or None
