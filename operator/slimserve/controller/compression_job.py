"""CompressionJob controller: one batch/v1 Job per generation, followed until it ends.

`reconcile_compression_job` (create, spec change, operator resume): a generation that has finished
(Succeeded or Failed) is left as it is, before anything else is looked at: only a spec change (a new
generation) starts a new Job. Otherwise: validate → build → adopt → retire the previous generation's Job →
apply the pod's ServiceAccount/Role/RoleBinding → status Pending (the previous run's fields reset) → create the
Job when it does not exist yet.

Children are only ever this CompressionJob's own (`compression_job_children`): what stands in their way, or
an apply the API server refuses, is told in the status (Succeeded=False, Stalled=True) and retried with a
doubling delay until it is gone.

`follow_compression_job` (every event of a Job this operator made, including the initial listing after a
restart): derive the CompressionJob's phase and conditions from the Job and write them with optimistic
concurrency (the compression pod writes progress, artifact and metrics into the same status).
"""

from __future__ import annotations

import functools
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from slimserve.api import GROUP, VERSION, CompressionJob
from slimserve.controller import kube
from slimserve.controller.app import OperatorMemo
from slimserve.controller.compression_job_children import Blocked, Owner, apply_child, check_controlled, retry_delay
from slimserve.controller.builders.compression_job import (
    COMPONENT,
    GENERATION_LABEL,
    InvalidSpec,
    build_access,
    build_job,
    check_runnable,
    job_name,
    parse_compression_job_spec,
    parse_pod_annotations,
)
from slimserve.controller.compression_job_status import (
    blocked_status,
    condition_change_events,
    invalid_status,
    is_finished,
    may_change_status,
    pending_status,
    status_from_job,
    unblocked_status,
)
from slimserve.controller.labels import MANAGED_BY
from slimserve.kube.status import Derive, update_status

PLURAL = CompressionJob.plural
JOB_LABELS = {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/component": COMPONENT}


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def reconcile_compression_job(
    body: kopf.Body,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    name: str,
    namespace: str,
    retry: int,
    memo: OperatorMemo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    generation = int(meta["generation"])
    # First, before anything the operator's configuration decides: a finished result stays as it is, whatever
    # pools or annotations the operator (re)starts with.
    if is_finished(status, generation):
        logger.info(f"generation {generation} has finished ({status['phase']}); only a spec change runs it again")
        return
    previous_job = status.get("jobName")
    try:
        parsed = parse_compression_job_spec(dict(spec))
        check_runnable(parsed, memo.config)
        pod_annotations = parse_pod_annotations(dict(meta.get("annotations") or {}))
    except InvalidSpec as exc:
        message = str(exc)
        _reconcile_invalid(memo.api, namespace, name, meta["uid"], generation, previous_job, message)
        raise kopf.PermanentError(f"invalid spec: {message}") from None

    desired = job_name(name, generation)
    access = build_access(name=name, namespace=namespace)
    job = build_job(
        name=name,
        namespace=namespace,
        generation=generation,
        spec=parsed,
        config=memo.config,
        pod_annotations=pod_annotations,
    )
    kopf.adopt([*access, job], owner=body)
    owner = Owner(name=name, uid=meta["uid"])
    try:
        _retire_job(memo.api, namespace, previous_job, keep=desired, owner_uid=owner.uid)
        for manifest in access:
            apply_child(memo.api, manifest, owner)
        existing = kube.read(memo.api, "batch/v1", "Job", namespace, desired)
        if existing is not None:
            check_controlled(existing, owner)
        # Status before the Job: the Job's events are applied only once the status speaks of this generation.
        current, _ = _write_status(
            memo.api, namespace, name, lambda cj: _for_generation(cj, generation, pending_status, job_name=desired)
        )
        if current["metadata"].get("generation") != generation:
            return  # the spec changed again meanwhile; the newer generation's reconcile takes over
        if existing is None:
            apply_child(memo.api, job, owner)
        _write_status(
            memo.api, namespace, name, lambda cj: _for_generation(cj, generation, unblocked_status, job_name=desired)
        )
    except Blocked as blocked:
        _report_blocked(memo.api, namespace, name, generation, desired, blocked)
        raise kopf.TemporaryError(f"{blocked}; retrying", delay=retry_delay(retry)) from None
    except ApiException as exc:
        kube.raise_for_api_error(exc, f"CompressionJob {namespace}/{name}")


def _reconcile_invalid(
    api, namespace: str, name: str, uid: str, generation: int, previous_job: str | None, message: str
) -> None:
    """No Job for a spec that cannot run (a running one of an earlier generation is stopped); say why in status."""
    try:
        _retire_job(api, namespace, previous_job, keep=None, owner_uid=uid)
        _write_status(api, namespace, name, lambda cj: _for_generation(cj, generation, invalid_status, message=message))
    except ApiException as exc:
        kube.raise_for_api_error(exc, f"CompressionJob {namespace}/{name}")


def _report_blocked(api, namespace: str, name: str, generation: int, job: str, blocked: Blocked) -> None:
    """Succeeded=False and Stalled=True with the cause (an Event on the transition)."""
    derive = lambda cj: _for_generation(  # noqa: E731
        cj, generation, blocked_status, job_name=job, reason=blocked.reason, message=str(blocked)
    )
    try:
        _write_status(api, namespace, name, derive)
    except ApiException:
        pass  # the CompressionJob is gone, or the API is down: the retry tells the rest


@kopf.on.event("batch", "v1", "jobs", labels=JOB_LABELS)
def follow_compression_job(
    body: kopf.Body,
    type: str | None,
    name: str,
    namespace: str,
    labels: kopf.Labels,
    memo: OperatorMemo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    owner = _compression_job_owner(body)
    if owner is None or GENERATION_LABEL not in labels or not may_change_status(body, deleted=type == "DELETED"):
        return
    generation = int(labels[GENERATION_LABEL])
    job = dict(body)
    failed_pod = functools.cache(lambda: _latest_failed_pod(memo.api, namespace, name))

    def derive(compression_job: dict[str, Any]) -> dict[str, Any] | None:
        meta = compression_job["metadata"]
        if meta.get("uid") != owner["uid"] or meta.get("deletionTimestamp"):
            return None
        return status_from_job(
            compression_job, job, generation=generation, failed_pod=failed_pod, deleted=type == "DELETED"
        )

    try:
        _write_status(memo.api, namespace, owner["name"], derive)
    except ApiException as exc:
        if exc.status != 404:  # 404: the CompressionJob is gone and its Jobs with it
            # Kopf never retries event handlers; the Job's next event, or the listing after a restart, repairs it.
            logger.error(f"could not update CompressionJob {namespace}/{owner['name']}: {exc.status} {exc.reason}")


def _for_generation(compression_job: dict[str, Any], generation: int, derive, **kwargs: Any) -> dict[str, Any] | None:
    """Derive a status only while the object is still at `generation` (else a newer reconcile is coming)."""
    if compression_job["metadata"].get("generation") != generation:
        return None
    return derive(compression_job.get("status"), generation=generation, **kwargs)


def _write_status(api, namespace: str, name: str, derive: Derive) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Write the derived status (conflicts recomputed at once) and post an Event per condition transition."""
    current, patch = update_status(api, PLURAL, namespace, name, derive)
    if patch and "conditions" in patch:
        before = (current.get("status") or {}).get("conditions")
        for event in condition_change_events(before, patch["conditions"]):
            kopf.event(current, **event)
    return current, patch


def _retire_job(api, namespace: str, job: str | None, *, keep: str | None, owner_uid: str) -> None:
    """Delete the previous generation's Job, if it is this CompressionJob's (the name comes from a status the
    pod may write); its pods follow through garbage collection."""
    if not job or job == keep:
        return
    kube.delete_controlled(api, "batch/v1", "Job", namespace, job, owner_uid)


def _compression_job_owner(job: kopf.Body) -> dict[str, Any] | None:
    for ref in job.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == CompressionJob.kind and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return ref
    return None


def _latest_failed_pod(api, namespace: str, job: str) -> dict[str, Any] | None:
    """The Job's most recently started failed pod: its container's reason and termination message."""
    try:
        pods = kube.list_objects(api, "v1", "Pod", namespace, label_selector=f"batch.kubernetes.io/job-name={job}")
    except ApiException:
        return None  # the failure is still reported, only without the pod's details
    failed = [pod for pod in pods if (pod.get("status") or {}).get("phase") == "Failed"]
    return max(failed, key=lambda pod: pod["metadata"].get("creationTimestamp") or "", default=None)
