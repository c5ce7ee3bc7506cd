"""Kopf handlers of ModelService: thin entry points into `model_service_reconcile`.

- The ModelService's own create/update/resume handlers run the full pass (Kopf retries them).
- Watches of what a service depends on queue it for another pass: its children (drift: an edited or deleted
  child is restored; Deployment progress updates the status) and its CompressionJob.
- Kopf indices say which services serve which CompressionJob, and which optional children (HPA, PDB) exist,
  so stale ones are deleted without listing anything.
- KEDA is optional and Kopf does not watch it: a loop looks after ScaledObjects (`model_service_keda`).
- A service with spec.canary.rollback gets a daemon that watches its canary's error rate
  (`model_service_canary_rollback`); Kopf starts and stops it with the setting.

The watch handlers only look at the event and queue work, so they are coroutines: no thread per event. The
work queue, the KEDA loop and the Event poster live on the memo (`memo.model_services`) and start and stop
with the operator (`model_service_runtime`).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from slimserve.api import GROUP, VERSION
from slimserve.api.model_service import ModelService
from slimserve.controller import model_service_runtime as runtime_of
from slimserve.controller.builders.model_service import (
    CHILD_LABELS,
    HPA_REF,
    PDB_REF,
    child_name,
    controller_owner,
)
from slimserve.controller.model_service_canary import CanaryWaiting
from slimserve.controller.model_service_canary_rollback import follow_error_rate
from slimserve.controller.model_service_reconcile import COMPRESSION_JOBS, ChildrenRefused, reconcile
from slimserve.controller.model_service_state import Runtime
from slimserve.controller.model_service_status import resolve_compression_job

log = logging.getLogger(__name__)

PLURAL = ModelService.plural


# ---- lifecycle ----------------------------------------------------------------------------------------


@kopf.on.startup()
async def start_model_service_controller(
    memo: Any,
    model_service_hpas: kopf.Index,
    model_service_pdbs: kopf.Index,
    **_: Any,
) -> None:
    await runtime_of.start(memo.model_services, {HPA_REF[1]: model_service_hpas, PDB_REF[1]: model_service_pdbs})


@kopf.on.cleanup()
async def stop_model_service_controller(memo: Any, **_: Any) -> None:
    await runtime_of.stop(memo.model_services)


# ---- the ModelService itself --------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile_model_service(body: kopf.Body, memo: Any, **_: Any) -> None:
    # Waiting for a CompressionJob is not a retry: its watch brings the service back when the job changes, and
    # a handler parked in a delayed retry would hold back spec changes until the delay ran out. For the same
    # reason refused children are retried from the work queue, with the back-off the refusal asks for.
    try:
        reconcile(memo.model_services, body)
    except (ChildrenRefused, CanaryWaiting) as retry:  # a canary waits for the side gaining traffic the same way
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        runtime_of.queue_full_pass(memo.model_services, key, retry.delay)


def _rolls_back(spec: kopf.Spec, **_: Any) -> bool:
    return bool((spec.get("canary") or {}).get("rollback"))


@kopf.daemon(GROUP, VERSION, PLURAL, when=_rolls_back, cancellation_timeout=10)
async def follow_canary_error_rate(stopped: kopf.DaemonStopped, body: kopf.Body, memo: Any, **_: Any) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    await follow_error_rate(memo.model_services, key, body, stopped)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def forget_deleted_model_service(type: str | None, namespace: str, name: str, memo: Any, **_: Any) -> None:
    if type == "DELETED":
        runtime_of.forget(memo.model_services, (namespace, name))


@kopf.index(GROUP, VERSION, PLURAL)
async def model_service_dependencies(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple, Any]:
    """("job", namespace, job) -> names of the services serving that CompressionJob's artifact."""
    keys: dict[tuple, Any] = {}
    for model in (spec.get("model"), (spec.get("canary") or {}).get("model")):
        job = (model or {}).get("compressionJobRef")
        if job and job.get("name"):
            keys[("job", namespace, job["name"])] = name
    return keys


# ---- what a service depends on ------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, COMPRESSION_JOBS)
async def follow_compression_job(
    type: str | None,
    event: dict[str, Any],
    namespace: str,
    name: str,
    memo: Any,
    model_service_dependencies: kopf.Index,
    **_: Any,
) -> None:
    """A job finished, failed, re-ran or vanished: services whose model that changes are reconciled."""
    services = model_service_dependencies.get(("job", namespace, name))
    if not services:
        return
    runtime: Runtime = memo.model_services
    resolution = resolve_compression_job(name, None if type == "DELETED" else event["object"])
    for service in services:
        snapshot = runtime.snapshots.get((namespace, service))
        if snapshot is None or snapshot.inputs.resolution != resolution:
            runtime_of.queue_full_pass(runtime, (namespace, service))


# ---- children -----------------------------------------------------------------------------------------


def has_canary(runtime: Runtime, key: tuple[str, str]) -> bool:
    snapshot = runtime.snapshots.get(key)
    return snapshot is not None and bool(snapshot.status.get("canary"))


def observe_child(runtime: Runtime, api_version: str, kind: str, type: str | None, obj: dict[str, Any]) -> None:
    """Restore a child deleted or edited by hand; feed Deployment progress to the status."""
    meta = obj.get("metadata") or {}
    owner = controller_owner(meta)
    if owner is None:
        return
    key = (meta["namespace"], owner)
    if type == "DELETED":
        log.info("%s %s/%s was deleted; reconciling its ModelService", kind, meta["namespace"], meta["name"])
        runtime_of.queue_full_pass(runtime, key)
        return
    if runtime.changed_since_applied(key, (api_version, kind, meta["name"]), obj):
        if runtime.pass_under_way(key):  # likely the pass's own apply, seen before it was remembered
            log.debug("%s %s/%s changed during a pass; checking it again", kind, meta["namespace"], meta["name"])
        else:
            log.info("%s %s/%s was changed by someone else; restoring it", kind, meta["namespace"], meta["name"])
        runtime_of.queue_full_pass(runtime, key)
    elif kind == "Deployment" and (meta["name"] != child_name(owner) or has_canary(runtime, key)):
        runtime_of.queue_full_pass(runtime, key)  # a canary's replicas follow both Deployments' progress
    elif kind == "Deployment":
        runtime.note_deployment(key, obj)
        runtime_of.queue_status_pass(runtime, key)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
async def follow_deployment(type: str | None, event: dict[str, Any], memo: Any, **_: Any) -> None:
    observe_child(memo.model_services, "apps/v1", "Deployment", type, event["object"])


@kopf.on.event("", "v1", "services", labels=CHILD_LABELS)
async def follow_service(type: str | None, event: dict[str, Any], memo: Any, **_: Any) -> None:
    observe_child(memo.model_services, "v1", "Service", type, event["object"])


@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=CHILD_LABELS)
async def follow_hpa(type: str | None, event: dict[str, Any], memo: Any, **_: Any) -> None:
    observe_child(memo.model_services, *HPA_REF, type, event["object"])


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=CHILD_LABELS)
async def follow_pdb(type: str | None, event: dict[str, Any], memo: Any, **_: Any) -> None:
    observe_child(memo.model_services, *PDB_REF, type, event["object"])


def _owned(meta: kopf.Meta, namespace: str, name: str) -> dict[tuple[str, str], str] | None:
    owner = controller_owner(dict(meta))
    return {(namespace, owner): name} if owner else None


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=CHILD_LABELS)
async def model_service_hpas(meta: kopf.Meta, namespace: str, name: str, **_: Any) -> dict | None:
    return _owned(meta, namespace, name)


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=CHILD_LABELS)
async def model_service_pdbs(meta: kopf.Meta, namespace: str, name: str, **_: Any) -> dict | None:
    return _owned(meta, namespace, name)
