"""BatchInference controller: one Indexed Job per generation, its status summed from the Job and the shards.

`reconcile_batch_inference` (create, spec change, operator resume): a generation that has finished is left
as it is. Otherwise: validate → resolve the model (a CompressionJob's artifact is waited for and its digest
pinned) → build → adopt → retire the previous generation's Job → apply the pods' ServiceAccount, Role and
RoleBinding → status Pending (the previous run's fields reset) → create the Job when it does not exist yet.
What stands in the way of a child is told in the status (Succeeded=False, Stalled=True) and retried with a
doubling delay, as for a CompressionJob (`compression_job_children`).

`follow_batch_job` (every event of a Job this operator made for a BatchInference) and
`follow_shard_reports` (every change of a BatchInference, the pods' shardProgress patches among them) derive
the counts, throughput, output and conditions from the Job and the shards' reports (`batch_inference_status`).
"""

from __future__ import annotations

import functools
from datetime import datetime, timezone
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from slimserve.api import GROUP, VERSION, BatchInference, CompressionJob
from slimserve.controller import kube
from slimserve.controller.app import OperatorMemo
from slimserve.controller.batch_inference_status import (
    blocked_status,
    invalid_status,
    pending_status,
    status_from_job,
    unblocked_status,
    waiting_for_model_status,
)
from slimserve.controller.builders.batch_inference import (
    COMPONENT,
    build_access,
    build_job,
    check_runnable,
    job_name,
    parse_batch_inference_spec,
)
from slimserve.controller.builders.compression_job import (
    GENERATION_LABEL,
    InvalidSpec,
    parse_pod_annotations,
)
from slimserve.controller.compression_job_children import Blocked, Owner, apply_child, check_controlled, retry_delay
from slimserve.controller.job_runs import for_generation, job_owner, retire_job, write_status
from slimserve.controller.job_status import is_finished, may_change_status
from slimserve.controller.labels import MANAGED_BY
from slimserve.controller.model_service_reconcile import read_custom
from slimserve.controller.model_service_status import resolve_compression_job, resolve_model_uri

PLURAL = BatchInference.plural
JOB_LABELS = {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/component": COMPONENT}
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def reconcile_batch_inference(
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
    if is_finished(status, generation):
        logger.info(f"generation {generation} has finished ({status['phase']}); only a spec change runs it again")
        return
    previous_job = status.get("jobName")
    owner = Owner(name=name, uid=meta["uid"], kind=BatchInference.kind)
    try:
        parsed = parse_batch_inference_spec(dict(spec))
        check_runnable(parsed, memo.config)
        pod_annotations = parse_pod_annotations(dict(meta.get("annotations") or {}))
    except InvalidSpec as exc:
        message = str(exc)
        _settle(memo.api, namespace, name, owner, previous_job, generation, invalid_status, message=message)
        raise kopf.PermanentError(f"invalid spec: {message}") from None

    if parsed.model.uri is not None:
        resolution = resolve_model_uri(parsed.model.uri)
    else:
        ref = parsed.model.compression_job_ref.name
        resolution = resolve_compression_job(ref, read_custom(memo.api, CompressionJob.plural, namespace, ref))
    if resolution.model is None:
        verdict = resolution.verdict
        # A failed or missing CompressionJob waits for someone to act (Stalled); a running one only for time.
        derive = blocked_status if verdict.reason != "WaitingForCompression" else waiting_for_model_status
        extra = {"job_name": None} if derive is blocked_status else {}
        _settle(memo.api, namespace, name, owner, previous_job, generation, derive,
                reason=verdict.reason, message=verdict.message, **extra)
        raise kopf.TemporaryError(f"no model yet: {verdict.message}", delay=retry_delay(retry))

    model = resolution.model
    desired = job_name(name, generation)
    access = build_access(name=name, namespace=namespace)
    job = build_job(
        name=name, namespace=namespace, generation=generation, spec=parsed, config=memo.config,
        model_uri=model.uri, model_digest=model.digest, pod_annotations=pod_annotations,
    )
    kopf.adopt([*access, job], owner=body)
    try:
        retire_job(memo.api, namespace, previous_job, keep=desired, owner_uid=owner.uid)
        for manifest in access:
            apply_child(memo.api, manifest, owner)
        existing = kube.read(memo.api, "batch/v1", "Job", namespace, desired)
        if existing is not None:
            check_controlled(existing, owner)
        # Status before the Job: the Job's events are applied only once the status speaks of this generation.
        current, _ = write_status(memo.api, PLURAL, namespace, name, lambda binf: for_generation(
            binf, generation, pending_status, job_name=desired, shards=parsed.shard_count,
            model_uri=model.uri, model_digest=model.digest,
        ))
        if current["metadata"].get("generation") != generation:
            return  # the spec changed again meanwhile; the newer generation's reconcile takes over
        if existing is None:
            apply_child(memo.api, job, owner)
        write_status(memo.api, PLURAL, namespace, name, lambda binf: for_generation(
            binf, generation, unblocked_status, job_name=desired
        ))
    except Blocked as blocked:
        try:
            write_status(memo.api, PLURAL, namespace, name, lambda binf: for_generation(
                binf, generation, blocked_status, job_name=desired, reason=blocked.reason, message=str(blocked)
            ))
        except ApiException:
            pass  # the BatchInference is gone, or the API is down: the retry tells the rest
        raise kopf.TemporaryError(f"{blocked}; retrying", delay=retry_delay(retry)) from None
    except ApiException as exc:
        kube.raise_for_api_error(exc, f"BatchInference {namespace}/{name}")


def _settle(api, namespace: str, name: str, owner: Owner, previous_job: str | None, generation: int, derive, **kwargs) -> None:
    """No Job for this generation (yet): a running one of an earlier generation is stopped; the status says why."""
    try:
        retire_job(api, namespace, previous_job, keep=None, owner_uid=owner.uid)
        write_status(api, PLURAL, namespace, name, lambda binf: for_generation(binf, generation, derive, **kwargs))
    except ApiException as exc:
        kube.raise_for_api_error(exc, f"BatchInference {namespace}/{name}")


# ---- following the Job and the shards' reports --------------------------------------------------------


@kopf.on.event("batch", "v1", "jobs", labels=JOB_LABELS)
def follow_batch_job(
    body: kopf.Body, type: str | None, namespace: str, labels: kopf.Labels, memo: OperatorMemo, logger: kopf.Logger,
    **_: Any,
) -> None:
    owner = job_owner(body, BatchInference.kind)
    if owner is None or GENERATION_LABEL not in labels or not may_change_status(body, deleted=type == "DELETED"):
        return
    _refresh(memo.api, namespace, owner["name"], dict(body), owner_uid=owner["uid"],
             generation=int(labels[GENERATION_LABEL]), deleted=type == "DELETED", logger=logger)


@kopf.on.event(GROUP, VERSION, PLURAL)
def follow_shard_reports(
    type: str | None, body: kopf.Body, namespace: str, name: str, memo: OperatorMemo, logger: kopf.Logger, **_: Any
) -> None:
    status = body.get("status") or {}
    generation = body["metadata"].get("generation")
    job = status.get("jobName")
    if type == "DELETED" or not job or status.get("observedGeneration") != generation or not status.get("shardProgress"):
        return
    if is_finished(status, generation):
        return
    try:
        live = kube.read(memo.api, "batch/v1", "Job", namespace, job)
    except ApiException:
        return  # the Job's own next event repairs it
    if live is not None and kube.controller_uid(live) == body["metadata"]["uid"]:
        _refresh(memo.api, namespace, name, live, owner_uid=body["metadata"]["uid"], generation=generation,
                 deleted=False, logger=logger)


def _refresh(
    api, namespace: str, name: str, job: dict[str, Any], *, owner_uid: str, generation: int, deleted: bool, logger
) -> None:
    failed_pods = functools.cache(lambda: _failed_pods_by_index(api, namespace, job["metadata"]["name"]))

    def derive(batch_inference: dict[str, Any]) -> dict[str, Any] | None:
        meta = batch_inference["metadata"]
        if meta.get("uid") != owner_uid or meta.get("deletionTimestamp"):
            return None
        return status_from_job(
            batch_inference, job, generation=generation, failed_pods=failed_pods,
            now=datetime.now(timezone.utc), deleted=deleted,
        )

    try:
        write_status(api, PLURAL, namespace, name, derive)
    except ApiException as exc:
        if exc.status != 404:  # 404: the BatchInference is gone and its Jobs with it
            # Kopf never retries event handlers; the next event, or the listing after a restart, repairs it.
            logger.error(f"could not update BatchInference {namespace}/{name}: {exc.status} {exc.reason}")


def _failed_pods_by_index(api, namespace: str, job: str) -> dict[int, dict[str, Any]]:
    """Each failed index's most recently started failed pod: its container's reason and termination message."""
    try:
        pods = kube.list_objects(api, "v1", "Pod", namespace, label_selector=f"batch.kubernetes.io/job-name={job}")
    except ApiException:
        return {}  # the failure is still reported, only without the pods' details
    latest: dict[int, dict[str, Any]] = {}
    for pod in pods:
        index = (pod["metadata"].get("labels") or {}).get(COMPLETION_INDEX_LABEL)
        if (pod.get("status") or {}).get("phase") != "Failed" or index is None or not index.isdigit():
            continue
        known = latest.get(int(index))
        if known is None or pod["metadata"].get("creationTimestamp", "") > known["metadata"].get("creationTimestamp", ""):
            latest[int(index)] = pod
    return latest
