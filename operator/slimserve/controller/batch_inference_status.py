"""A BatchInference's status, derived from its Job and its shards' own reports: pure functions, no API calls.

Each pod writes only `shardProgress["<its index>"]` (records done and total, its part, the manifest when it
wrote it), tagged with the generation it runs; the operator owns every other field and sums them from the
entries of the current generation and the Job's `completedIndexes`, `failedIndexes` and `active`. The
operator writes an entry only for an index Kubernetes has failed for good without the pod saying why (a
crash, an out-of-memory kill): no pod of that index is left to write it.

Each function returns a merge patch of the status (None deletes a field), or None when nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from slimserve.controller.conditions import FALSE, TRUE, UNKNOWN, set_condition
from slimserve.controller.job_status import (
    FINAL_PHASES,
    MESSAGE_LIMIT,
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

RUN = JobRun(
    fields=(
        "progress", "recordsDone", "recordsTotal", "recordsPerSecond", "shards", "shardProgress", "output",
        "startTime", "completionTime",
    )
)
FAILED_SHARDS_SHOWN = 10  # in the Succeeded message; every one is in shardProgress

FailedPods = Callable[[], dict[int, dict[str, Any]]]


def parse_indexes(text: str | None) -> list[int]:
    """A Job's index list ("0-2,5") as the indexes it names ([0, 1, 2, 5])."""
    indexes: list[int] = []
    for part in (text or "").split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        indexes.extend(range(int(first), int(last or first) + 1))
    return indexes


def pending_status(
    status: dict[str, Any] | None, *, generation: int, job_name: str, shards: int, model_uri: str, model_digest: str | None
) -> StatusPatch | None:
    """A generation's Job is about to be made: the previous run's counts, shards and output are dropped."""
    status = status or {}
    if (
        status.get("observedGeneration") == generation
        and status.get("jobName") == job_name
        and status.get("phase") not in (None, "Invalid")
    ):
        return None  # already started (a retried or resumed reconcile), or held up (see `unblocked_status`)
    return {
        **RUN.waiting_for_job(status, generation, job_name),
        **RUN.cleared(),
        "shards": {"total": shards, "done": 0, "failed": 0, "running": 0},
        "modelUri": model_uri,
        "modelDigest": model_digest,
    }


unblocked_status = RUN.unblocked_status
invalid_status = RUN.invalid_status
# Also when the model cannot be had (its CompressionJob failed or is missing).
blocked_status = RUN.blocked_status


def waiting_for_model_status(
    status: dict[str, Any] | None, *, generation: int, reason: str, message: str
) -> StatusPatch | None:
    """The CompressionJob's artifact is not there yet: Pending, no Job, in progress (kstatus Reconciling)."""
    status = status or {}
    conditions = set_condition(status.get("conditions"), SUCCEEDED, UNKNOWN, reason, message, generation=generation)
    conditions = with_kstatus_conditions(conditions, "Pending", generation)
    patch = {"observedGeneration": generation, "phase": "Pending", "jobName": None, "conditions": conditions}
    return changed_fields(status, {**patch, **RUN.cleared()})


def status_from_job(
    batch_inference: dict[str, Any],
    job: dict[str, Any],
    *,
    generation: int,
    failed_pods: FailedPods,
    now: datetime,
    deleted: bool = False,
) -> StatusPatch | None:
    """The status that `job` (of `generation`) and the shards' reports imply; `failed_pods` (index -> that
    index's last failed pod) is asked only when an index failed without its pod reporting why."""
    meta = batch_inference.get("metadata", {})
    status = batch_inference.get("status") or {}
    if meta.get("generation") != generation or status.get("observedGeneration") != generation:
        return None  # the Job of an older generation, or a reconcile that has not started this one yet
    if status.get("jobName") != job["metadata"]["name"] or status.get("phase") in ("Invalid", *FINAL_PHASES):
        return None  # not this generation's Job, or a finished run, which is never rewritten
    job_status = job.get("status") or {}
    total = int((job.get("spec") or {}).get("completions") or 0)
    reports = {
        index: entry
        for index, entry in (status.get("shardProgress") or {}).items()
        if isinstance(entry, dict) and entry.get("generation") == generation
    }
    failed_indexes = parse_indexes(job_status.get("failedIndexes"))
    shard_reports = _failed_shard_reports(reports, failed_indexes, generation, failed_pods)
    reports.update(shard_reports)

    records_done = sum(int(entry.get("recordsDone") or 0) for entry in reports.values())
    totals = [entry.get("recordsTotal") for entry in reports.values()]
    records_total = sum(totals) if len(totals) == total and None not in totals else None
    patch: StatusPatch = {
        "shards": {
            "total": total,
            "done": len(parse_indexes(job_status.get("completedIndexes"))),
            "failed": len(failed_indexes),
            "running": int(job_status.get("active") or 0),
        },
        "recordsDone": records_done,
        "recordsTotal": records_total,
        "progress": f"{records_done}/{records_total if records_total is not None else '?'}",
    }
    manifest = next((entry["manifest"] for entry in reports.values() if entry.get("manifest")), None)
    if manifest:
        patch["output"] = {"manifestUri": manifest.get("uri"), "manifestDigest": manifest.get("digest")}
    if has_started(job_status) or job_status.get("active"):
        patch["startTime"] = status.get("startTime") or job_status.get("startTime")

    conditions = status.get("conditions")
    complete, failed = job_condition(job_status, "Complete"), job_condition(job_status, "Failed")
    if complete is not None:
        patch["completionTime"] = job_status.get("completionTime") or complete.get("lastTransitionTime")
        if manifest:
            message = f"{records_done} records in {total} parts; manifest {manifest.get('uri')} ({manifest.get('digest')})"
            conditions = set_condition(conditions, SUCCEEDED, TRUE, "Completed", message, generation=generation)
            patch["phase"] = "Succeeded"
        else:
            message = "every shard completed but none reported the output manifest"
            conditions = set_condition(conditions, SUCCEEDED, FALSE, "ManifestMissing", message, generation=generation)
            patch["phase"] = "Failed"
    elif failed is not None:
        reason, message = _failure(failed, failed_indexes, reports)
        conditions = set_condition(conditions, SUCCEEDED, FALSE, reason, message, generation=generation)
        patch["phase"] = "Failed"
        patch["completionTime"] = failed.get("lastTransitionTime")
    elif deleted:
        message = f"Job {job['metadata']['name']} was deleted before it finished"
        conditions = set_condition(conditions, SUCCEEDED, FALSE, "JobDeleted", message, generation=generation)
        patch["phase"] = "Failed"
    elif "startTime" in patch:
        shards = patch["shards"]
        message = f"{shards['done']} of {total} shards done, {shards['running']} running, {shards['failed']} failed"
        conditions = set_condition(conditions, SUCCEEDED, UNKNOWN, "Running", message, generation=generation)
        patch["phase"] = "Running"
    if records_done != status.get("recordsDone") or "completionTime" in patch:
        patch["recordsPerSecond"] = _throughput(records_done, patch.get("startTime"), patch.get("completionTime"), now)
    patch["conditions"] = with_kstatus_conditions(conditions, patch.get("phase", status.get("phase")), generation)
    changed = changed_fields(status, patch)
    if shard_reports:
        changed = {**(changed or {}), "shardProgress": shard_reports}
    return changed


def _failed_shard_reports(
    reports: dict[str, dict[str, Any]], failed_indexes: list[int], generation: int, failed_pods: FailedPods
) -> dict[str, dict[str, Any]]:
    """Entries for the indexes Kubernetes failed whose pods reported no failure: the pod's termination message."""
    silent = [index for index in failed_indexes if (reports.get(str(index)) or {}).get("state") != "Failed"]
    if not silent:
        return {}
    pods = failed_pods()
    entries = {}
    for index in silent:
        entry = reports.get(str(index)) or {}
        entries[str(index)] = {
            "generation": generation,
            "state": "Failed",
            "recordsDone": int(entry.get("recordsDone") or 0),
            "message": _pod_failure(pods.get(index)),
        }
    return entries


def _pod_failure(pod: dict[str, Any] | None) -> str:
    terminated = terminated_state(pod)
    if pod is None or terminated is None:
        return "the shard's pod failed after its retries"
    return termination_detail(pod, terminated, (terminated.get("message") or "").strip())[:MESSAGE_LIMIT]


def _failure(failed: dict[str, Any], failed_indexes: list[int], reports: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """(reason, message) of a failed Job: the deadline, or the failed shards each with what its report says."""
    if failed.get("reason") == "DeadlineExceeded":
        return "DeadlineExceeded", failed.get("message") or "the Job ran past spec.activeDeadlineSeconds"
    if not failed_indexes:
        return "JobFailed", failed.get("message") or failed.get("reason") or "the Job failed"
    shown = [f"shard {index}: {(reports.get(str(index)) or {}).get('message') or 'failed'}" for index in failed_indexes]
    more = len(shown) - FAILED_SHARDS_SHOWN
    message = f"{len(failed_indexes)} shard(s) failed; " + "; ".join(shown[:FAILED_SHARDS_SHOWN])
    if more > 0:
        message += f"; and {more} more (see status.shardProgress)"
    return "ShardsFailed", message[:MESSAGE_LIMIT]


def _throughput(records: int, start: str | None, end: str | None, now: datetime) -> float | None:
    if not start or not records:
        return None
    finish = datetime.fromisoformat(end.replace("Z", "+00:00")) if end else now
    seconds = (finish - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
    return round(records / seconds, 1) if seconds > 0 else None
