"""The status of a resource that runs one Job per generation (CompressionJob, BatchInference): what both
kinds derive alike from their Job. Pure functions, no API calls.

Each kind says what is its own through a `JobRun` (its fields of one run, whether it has a Started
condition); the functions return a merge patch of the status (None deletes a field), or None when nothing
changes.
"""

from __future__ import annotations

from dataclasses import dataclass
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
MESSAGE_LIMIT = 2048

StatusPatch = dict[str, Any]


@dataclass(frozen=True)
class JobRun:
    """What a kind's status holds of its own run."""

    fields: tuple[str, ...]  # of one run: cleared when a new generation starts, or when it cannot run
    pod: str | None = None  # what runs it ("the compression pod") for a kind with a Started condition

    def cleared(self) -> StatusPatch:
        return {field: None for field in self.fields}

    def waiting_for_job(self, status: dict[str, Any], generation: int, job_name: str) -> StatusPatch:
        conditions = status.get("conditions")
        if self.pod:
            conditions = set_condition(
                conditions, STARTED, FALSE, "Pending", f"waiting for {self.pod} to start", generation=generation
            )
        conditions = set_condition(
            conditions, SUCCEEDED, UNKNOWN, "Pending", f"waiting for Job {job_name}", generation=generation
        )
        conditions = with_kstatus_conditions(conditions, "Pending", generation)
        return {"observedGeneration": generation, "phase": "Pending", "jobName": job_name, "conditions": conditions}

    def unblocked_status(self, status: dict[str, Any] | None, *, generation: int, job_name: str) -> StatusPatch | None:
        """What held the generation up is gone and its Job exists: plain Pending again, the Job's events go on."""
        status = status or {}
        if status.get("observedGeneration") != generation or not is_blocked(status):
            return None
        return self.waiting_for_job(status, generation, job_name)

    def invalid_status(self, status: dict[str, Any] | None, *, generation: int, message: str) -> StatusPatch | None:
        """The spec cannot run: no Job, and the reason in the Succeeded condition."""
        return self._not_running(status, generation, phase="Invalid", job_name=None, reason="InvalidSpec", message=message)

    def blocked_status(
        self, status: dict[str, Any] | None, *, generation: int, job_name: str | None, reason: str, message: str
    ) -> StatusPatch | None:
        """The generation's Job or its pods' access cannot be made yet (another's object in the way, an apply the
        API server refused), or what it needs cannot be had: still Pending and retried, but Succeeded=False and
        Stalled=True name the cause until it is gone, since waiting alone does not fix it. The status speaks of
        this generation and its Job from here on, so the Job may be created as soon as the cause is gone."""
        return self._not_running(status, generation, phase="Pending", job_name=job_name, reason=reason, message=message)

    def _not_running(
        self, status: dict[str, Any] | None, generation: int, *, phase: str, job_name: str | None, reason: str, message: str
    ) -> StatusPatch | None:
        status = status or {}
        message = message[:MESSAGE_LIMIT]
        conditions = status.get("conditions")
        if self.pod:
            conditions = set_condition(conditions, STARTED, FALSE, reason, message, generation=generation)
        conditions = set_condition(conditions, SUCCEEDED, FALSE, reason, message, generation=generation)
        conditions = with_kstatus_conditions(conditions, phase, generation)
        patch = {"observedGeneration": generation, "phase": phase, "jobName": job_name, "conditions": conditions}
        return changed_fields(status, {**patch, **self.cleared()})


def is_finished(status: dict[str, Any] | None, generation: int) -> bool:
    """Has this generation already run to its end (so an operator restart or a label edit must not re-run it)?"""
    status = status or {}
    return status.get("observedGeneration") == generation and status.get("phase") in FINAL_PHASES


def is_blocked(status: dict[str, Any] | None) -> bool:
    """Pending, but held up by a cause `JobRun.blocked_status` reported."""
    status = status or {}
    return _held_up(status.get("phase"), status.get("conditions"))


def _held_up(phase: str | None, conditions: list[dict[str, Any]] | None) -> bool:
    return phase == "Pending" and (find_condition(conditions, SUCCEEDED) or {}).get("status") == FALSE


def may_change_status(job: dict[str, Any], *, deleted: bool = False) -> bool:
    """False for a Job whose pod has not started yet: its status implies nothing new (saves a read per event)."""
    job_status = job.get("status") or {}
    finished = job_condition(job_status, "Complete") or job_condition(job_status, "Failed")
    return deleted or bool(finished) or has_started(job_status)


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


def termination_detail(pod: dict[str, Any], terminated: dict[str, Any], text: str) -> str:
    """How a pod's container ended, then what it said: "pod p: Error, exit code 1: <text>"."""
    detail = f"pod {pod['metadata']['name']}: {terminated.get('reason') or 'Terminated'}"
    detail += f", exit code {terminated.get('exitCode')}"
    return f"{detail}: {text}" if text else detail


def changed_fields(status: dict[str, Any], patch: StatusPatch) -> StatusPatch | None:
    """Only the fields that differ from `status`; None when there are none."""
    changed = {key: value for key, value in patch.items() if status.get(key) != value}
    return changed or None
