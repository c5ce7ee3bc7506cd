"""Kopf handlers of ModelService: thin entry points into `model_service_reconcile`.

- The ModelService's own create/update/resume handlers run the full pass (Kopf retries them).
- Watches of what a service depends on queue it for another pass: its children (drift: an edited or deleted
  child is restored; Deployment progress updates the status) and its CompressionJob.
- Kopf indices say which services serve which CompressionJob, and which optional children (HPA, PDB) exist,
  so stale ones are deleted without listing anything.
- KEDA is optional and Kopf does not watch it: a thread looks after ScaledObjects (`model_service_keda`).

The watch handlers only look at the event and queue work, so they are coroutines: no thread per event.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import kopf

from slimserve.api import GROUP, VERSION
from slimserve.api.model_service import ModelService
from slimserve.controller.builders.model_service import (
    CHILD_LABELS,
    HPA_REF,
    PDB_REF,
    controller_owner,
)
from slimserve.controller.model_service_keda import follow_keda
from slimserve.controller.model_service_reconcile import COMPRESSION_JOBS, ChildrenRefused, reconcile, sync
from slimserve.controller.model_service_state import Runtime, fingerprint
from slimserve.controller.model_service_status import resolve_compression_job
from slimserve.controller.workqueue import WorkQueue

log = logging.getLogger(__name__)

PLURAL = ModelService.plural
KEDA_CHECK_SECONDS = 10.0

RUNTIME = Runtime()
QUEUE: WorkQueue[tuple[str, str]] = WorkQueue(lambda key: sync(RUNTIME, key), workers=4, name="model-services")
_STOP = threading.Event()


def _queue_full_pass(key: tuple[str, str]) -> None:
    RUNTIME.want_full_pass(key)
    QUEUE.add(key)


# ---- lifecycle ----------------------------------------------------------------------------------------


@kopf.on.startup()
def start_model_service_controller(
    memo: Any,
    model_service_hpas: kopf.Index,
    model_service_pdbs: kopf.Index,
    **_: Any,
) -> None:
    RUNTIME.config, RUNTIME.api = memo.config, memo.api
    RUNTIME.owned = {
        HPA_REF[1]: model_service_hpas,
        PDB_REF[1]: model_service_pdbs,
    }
    QUEUE.start()
    _STOP.clear()
    threading.Thread(
        target=follow_keda,
        args=(RUNTIME, _queue_full_pass, _STOP, KEDA_CHECK_SECONDS),
        name="model-services-keda",
        daemon=True,
    ).start()


@kopf.on.cleanup()
def stop_model_service_controller(**_: Any) -> None:
    _STOP.set()
    QUEUE.stop()
    RUNTIME.events.stop()


# ---- the ModelService itself --------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile_model_service(body: kopf.Body, **_: Any) -> None:
    # Waiting for a CompressionJob is not a retry: its watch brings the service back when the job changes, and
    # a handler parked in a delayed retry would hold back spec changes until the delay ran out. For the same
    # reason refused children are retried from the work queue, with the back-off the refusal asks for.
    try:
        reconcile(RUNTIME, body)
    except ChildrenRefused as refused:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        RUNTIME.want_full_pass(key)
        QUEUE.add(key, refused.delay)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def forget_deleted_model_service(type: str | None, namespace: str, name: str, **_: Any) -> None:
    if type == "DELETED":
        RUNTIME.forget((namespace, name))
        QUEUE.forget((namespace, name))


@kopf.index(GROUP, VERSION, PLURAL)
async def model_service_dependencies(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple, Any]:
    """("job", namespace, job) -> names of the services serving that CompressionJob's artifact."""
    keys: dict[tuple, Any] = {}
    job = (spec.get("model") or {}).get("compressionJobRef")
    if job and job.get("name"):
        keys[("job", namespace, job["name"])] = name
    return keys


# ---- what a service depends on ------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, COMPRESSION_JOBS)
async def follow_compression_job(
    type: str | None, event: dict[str, Any], namespace: str, name: str, model_service_dependencies: kopf.Index, **_: Any
) -> None:
    """A job finished, failed, re-ran or vanished: services whose model that changes are reconciled."""
    services = model_service_dependencies.get(("job", namespace, name))
    if not services:
        return
    resolution = resolve_compression_job(name, None if type == "DELETED" else event["object"])
    for service in services:
        snapshot = RUNTIME.snapshots.get((namespace, service))
        if snapshot is None or snapshot.inputs.resolution != resolution:
            _queue_full_pass((namespace, service))


# ---- children -----------------------------------------------------------------------------------------


def observe_child(api_version: str, kind: str, type: str | None, obj: dict[str, Any]) -> None:
    """Restore a child deleted or edited by hand; feed Deployment progress to the status."""
    meta = obj.get("metadata") or {}
    owner = controller_owner(meta)
    if owner is None:
        return
    key = (meta["namespace"], owner)
    if type == "DELETED":
        log.info("%s %s/%s was deleted; reconciling its ModelService", kind, meta["namespace"], meta["name"])
        _queue_full_pass(key)
        return
    known = RUNTIME.child_fingerprint(key, (api_version, kind, meta["name"]))
    if known is not None and known != fingerprint(obj):
        log.info("%s %s/%s was changed by someone else; restoring it", kind, meta["namespace"], meta["name"])
        _queue_full_pass(key)
    elif kind == "Deployment":
        RUNTIME.note_deployment(key, obj)
        QUEUE.add(key)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
async def follow_deployment(type: str | None, event: dict[str, Any], **_: Any) -> None:
    observe_child("apps/v1", "Deployment", type, event["object"])


@kopf.on.event("", "v1", "services", labels=CHILD_LABELS)
async def follow_service(type: str | None, event: dict[str, Any], **_: Any) -> None:
    observe_child("v1", "Service", type, event["object"])


@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=CHILD_LABELS)
async def follow_hpa(type: str | None, event: dict[str, Any], **_: Any) -> None:
    observe_child(*HPA_REF, type, event["object"])


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=CHILD_LABELS)
async def follow_pdb(type: str | None, event: dict[str, Any], **_: Any) -> None:
    observe_child(*PDB_REF, type, event["object"])


def _owned(meta: kopf.Meta, namespace: str, name: str) -> dict[tuple[str, str], str] | None:
    owner = controller_owner(dict(meta))
    return {(namespace, owner): name} if owner else None


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=CHILD_LABELS)
async def model_service_hpas(meta: kopf.Meta, namespace: str, name: str, **_: Any) -> dict | None:
    return _owned(meta, namespace, name)


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=CHILD_LABELS)
async def model_service_pdbs(meta: kopf.Meta, namespace: str, name: str, **_: Any) -> dict | None:
    return _owned(meta, namespace, name)
