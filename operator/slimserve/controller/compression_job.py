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
    invalid_status,
    pending_status,
    status_from_job,
    unblocked_status,
)
from slimserve.controller.job_runs import for_generation, job_owner, retire_job, write_status
from slimserve.controller.job_status import is_finished, may_change_status
from slimserve.controller.labels import MANAGED_BY

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
        retire_job(memo.api, namespace, previous_job, keep=desired, owner_uid=owner.uid)
        for manifest in access:
            apply_child(memo.api, manifest, owner)
        existing = kube.read(memo.api, "batch/v1", "Job", namespace, desired)
        if existing is not None:
            check_controlled(existing, owner)
        # Status before the Job: the Job's events are applied only once the status speaks of this generation.
        current, _ = write_status(
            memo.api, PLURAL, namespace, name, lambda cj: for_generation(cj, generation, pending_status, job_name=desired)
        )
        if current["metadata"].get("generation") != generation:
            return  # the spec changed again meanwhile; the newer generation's reconcile takes over
        if existing is None:
            apply_child(memo.api, job, owner)
        write_status(
            memo.api, PLURAL, namespace, name, lambda cj: for_generation(cj, generation, unblocked_status, job_name=desired)
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
        retire_job(api, namespace, previous_job, keep=None, owner_uid=uid)
        derive = lambda cj: for_generation(cj, generation, invalid_status, message=message)  # noqa: E731
        write_status(api, PLURAL, namespace, name, derive)
    except ApiException as exc:
        kube.raise_for_api_error(exc, f"CompressionJob {namespace}/{name}")


def _report_blocked(api, namespace: str, name: str, generation: int, job: str, blocked: Blocked) -> None:
    """Succeeded=False and Stalled=True with the cause (an Event on the transition)."""
    derive = lambda cj: for_generation(  # noqa: E731
        cj, generation, blocked_status, job_name=job, reason=blocked.reason, message=str(blocked)
    )
    try:
        write_status(api, PLURAL, namespace, name, derive)
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
    owner = job_owner(body, CompressionJob.kind)
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
        write_status(memo.api, PLURAL, namespace, owner["name"], derive)
    except ApiException as exc:
        if exc.status != 404:  # 404: the CompressionJob is gone and its Jobs with it
            # Kopf never retries event handlers; the Job's next event, or the listing after a restart, repairs it.
            logger.error(f"could not update CompressionJob {namespace}/{owner['name']}: {exc.status} {exc.reason}")


def _latest_failed_pod(api, namespace: str, job: str) -> dict[str, Any] | None:
    """The Job's most recently started failed pod: its container's reason and termination message."""
    try:
        pods = kube.list_objects(api, "v1", "Pod", namespace, label_selector=f"batch.kubernetes.io/job-name={job}")
    except ApiException:
        return None  # the failure is still reported, only without the pod's details
    failed = [pod for pod in pods if (pod.get("status") or {}).get("phase") == "Failed"]
    return max(failed, key=lambda pod: pod["metadata"].get("creationTimestamp") or "", default=None)
