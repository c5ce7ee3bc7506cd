"""What the controllers that run a Job per generation (CompressionJob, BatchInference) do alike: derive a
status only for the generation it was computed for, write it with an Event per change of Succeeded, retire
the previous generation's Job, and find a Job's owner of their kind."""

from __future__ import annotations

from typing import Any

import kopf

from slimserve.api import GROUP
from slimserve.controller import kube
from slimserve.controller.job_status import condition_change_events
from slimserve.kube.status import Derive, update_status


def for_generation(obj: dict[str, Any], generation: int, derive, **kwargs: Any) -> dict[str, Any] | None:
    """Derive a status only while the object is still at `generation` (else a newer reconcile is coming)."""
    if obj["metadata"].get("generation") != generation:
        return None
    return derive(obj.get("status"), generation=generation, **kwargs)


def write_status(api, plural: str, namespace: str, name: str, derive: Derive) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Write the derived status (conflicts with the pods' writes recomputed at once) and post an Event per
    condition transition."""
    current, patch = update_status(api, plural, namespace, name, derive)
    if patch and "conditions" in patch:
        before = (current.get("status") or {}).get("conditions")
        for event in condition_change_events(before, patch["conditions"]):
            kopf.event(current, **event)
    return current, patch


def retire_job(api, namespace: str, job: str | None, *, keep: str | None, owner_uid: str) -> None:
    """Delete the previous generation's Job, if it is this owner's (the name comes from a status a pod may
    write); its pods follow through garbage collection."""
    if not job or job == keep:
        return
    kube.delete_controlled(api, "batch/v1", "Job", namespace, job, owner_uid)


def job_owner(job: kopf.Body, kind: str) -> dict[str, Any] | None:
    """The owner reference of `job` to a slimserve.io resource of `kind`, if any."""
    for ref in job.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == kind and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return ref
    return None
