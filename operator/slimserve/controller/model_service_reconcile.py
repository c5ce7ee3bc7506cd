"""Reconciliation of one ModelService: resolve the model, apply the children, delete stale ones, write status.

Level-based: every pass states the whole desired state (server-side apply makes an unchanged object a
no-op). Two paths share it:

- the full pass (`reconcile`), from the ModelService's own handlers (Kopf retries them) and from the work
  queue when something it depends on changed: a child was edited or deleted, its CompressionJob finished,
  KEDA's API appeared or went;
- the status-only pass (`refresh_status`), when the Deployment's status moved: the status is recomputed from
  what the last full pass saw plus the Deployment from the watch, so a rollout costs one status write.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

import kopf
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from slimserve.api import GROUP, VERSION
from slimserve.api.field_errors import field_errors
from slimserve.api.model_service import ModelReference, ModelService, ModelServiceSpec
from slimserve.controller import kube
from slimserve.kube import status as status_update
from slimserve.controller.builders.http_scaled_object import HTTP_SCALED_OBJECT_REF
from slimserve.controller.builders.model_service import Owner, deployment_replicas, desired_children, scales_to_zero
from slimserve.controller.config import NodePool
from slimserve.controller.model_service_canary import (
    CanaryPass,
    canary_children,
    keep_canary_status,
    plan_pass,
    raise_if_waiting,
    with_canary_status,
)
from slimserve.controller.model_service_events import transition_events
from slimserve.controller.model_service_state import (
    Key,
    Runtime,
    Snapshot,
    key_of,
)
from slimserve.controller.model_service_status import (
    APPLY_FAILED,
    APPLY_REJECTED,
    CHILD_CONFLICT,
    ModelResolution,
    Refusal,
    Rollout,
    Verdict,
    autoscaling_verdict,
    compose_status,
    evaluate_rollout,
    inputs_for,
    invalid_status,
    refusal_verdict,
    resolve_compression_job,
    resolve_model_uri,
    status_differs,
)
from slimserve.controller.model_service_cache import model_cache_refusal
from slimserve.controller.model_service_secrets import secrets_refusal

log = logging.getLogger(__name__)

COMPRESSION_JOBS = "compressionjobs"
# Holds the Deployment's replicas for a moment while an autoscaler takes them over (see hand_over_replicas).
HANDOVER_MANAGER = "slimserve-operator-handover"


# ---- API calls ----------------------------------------------------------------------------------------


def read_custom(api: client.ApiClient, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    """A slimserve.io object, or None when it does not exist."""
    try:
        return client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        kube.raise_for_api_error(exc, f"reading {plural} {namespace}/{name}")
        raise


def write_status(api: client.ApiClient, owner: Owner, status: dict[str, Any]) -> bool:
    """Merge-patch the status subresource; False when the ModelService is gone.

    The operator is the only writer of a ModelService's status, so no precondition (see `status_update`)."""
    try:
        status_update.patch_status(api, ModelService.plural, owner.namespace, owner.name, status, resource_version=None)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        kube.raise_for_api_error(exc, f"writing the status of ModelService {owner.namespace}/{owner.name}")
        raise


# ---- the passes ---------------------------------------------------------------------------------------


def body_ref(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        "apiVersion": body.get("apiVersion", f"{GROUP}/{VERSION}"),
        "kind": body.get("kind", ModelService.kind),
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
    }


def publish(
    runtime: Runtime, api: client.ApiClient, owner: Owner, ref: dict[str, Any], before: dict[str, Any], after: dict[str, Any]
) -> None:
    """Write the status when it changed, and post an Event per condition transition."""
    if status_differs(before, after) and write_status(api, owner, after):
        for event in transition_events(before, after):
            runtime.events.post(api, ref, event)


def _reject(runtime: Runtime, api: client.ApiClient, body: Mapping[str, Any], reason: str, message: str) -> None:
    previous = dict(body.get("status") or {})
    status = invalid_status(previous, body["metadata"].get("generation", 0), reason, message)
    publish(runtime, api, Owner.from_body(body), body_ref(body), previous, status)
    raise kopf.PermanentError(message)


def parse_spec(body: Mapping[str, Any]) -> ModelServiceSpec:
    return ModelServiceSpec.from_json(dict(body.get("spec") or {}))


def spec_error(exc: ValidationError) -> str:
    """The problems of the spec, each naming its field as `slimserve run` and the API server do."""
    return "; ".join(field_errors(exc, root=("spec",)))


def resolve_model(api: client.ApiClient, namespace: str, spec: ModelServiceSpec) -> ModelResolution:
    return resolve_reference(api, namespace, spec.model)


def resolve_reference(api: client.ApiClient, namespace: str, model: ModelReference) -> ModelResolution:
    """spec.model's or spec.canary.model's artifact, or why there is none yet."""
    if model.uri:
        return resolve_model_uri(model.uri)
    job_name = model.compression_job_ref.name
    return resolve_compression_job(
        job_name, read_custom(api, COMPRESSION_JOBS, namespace, job_name), allow_outside_budget=model.allow_outside_budget
    )


class ChildrenRefused(kopf.TemporaryError):
    """Some children could not be applied: the status says why; the pass is retried after `delay` (growing)."""


def reconcile(runtime: Runtime, body: Mapping[str, Any], *, force: bool = False) -> Snapshot:
    """The full pass. Raises kopf.PermanentError for a spec it cannot act on (after saying so in status), and
    ChildrenRefused when a child is someone else's or the API server refuses an apply (after saying so too).

    Unless `force`d (something changed that the inputs do not show: a child was edited or deleted), a pass
    whose inputs equal the last one's applies nothing: Kopf may call the handler twice for one change when
    the watch lags behind its own bookkeeping patch.
    """
    api, config = runtime.api, runtime.config
    owner = Owner.from_body(body)
    generation = body["metadata"].get("generation", 0)
    key = key_of(body)
    with runtime.lock(key):
        known = runtime.snapshots.get(key)
        # What this process wrote last is fresher than the body of an event that may predate the write.
        previous = known.status if known and known.owner.uid == owner.uid else dict(body.get("status") or {})
        try:
            spec = parse_spec(body)
        except ValidationError as exc:
            _reject(runtime, api, body, "InvalidSpec", spec_error(exc))
        try:
            pool = config.node_pool(spec.node_pool)
        except KeyError as exc:
            _reject(runtime, api, body, "UnknownNodePool", f"spec.nodePool: {exc.args[0]}")
        resolution = resolve_model(api, owner.namespace, spec)
        metric = spec.autoscaling.metric if spec.autoscaling else None
        # Both asked whatever the spec: a ScaledObject or HTTPScaledObject of an earlier spec is deleted only while
        # its API is known (discovery is cached for seconds).
        keda = runtime.keda.installed(api)
        to_zero = scales_to_zero(spec)
        http_add_on = runtime.http_add_on.installed(api)
        verdict = autoscaling_verdict(metric, keda_installed=keda, scale_to_zero=to_zero, http_add_on_installed=http_add_on)
        inputs = inputs_for(owner, generation, resolution, verdict, config.cluster_domain, tls=spec.tls is not None,
                            interceptor_url=config.http_interceptor_address.rstrip("/"))
        desired = (owner.uid, generation, resolution.model, keda, http_add_on)
        if not force and known is not None and known.desired == desired and known.inputs == inputs:
            return known
        rollout: Rollout | None = None
        refused: Verdict | None = None
        deployment_generation = known.deployment_generation if known else 0
        replicas = known.stated_replicas if known else None
        canary: CanaryPass | None = None
        if resolution.model is not None:
            replicas = deployment_replicas(spec, keda, http_add_on)
            canary = plan_pass(api, owner, spec, replicas, previous,
                               lambda model: resolve_reference(api, owner.namespace, model))
            replicas = canary.plan.stable if canary else replicas
            if replicas is None and known is not None and known.stated_replicas is not None:
                hand_over_replicas(api, owner, known.stated_replicas, spec)
            try:
                deployment, refusals = _apply_children(runtime, api, owner, spec, pool, resolution, keda, http_add_on,
                                                       replicas, canary)
            except NamespaceTerminating:
                log.debug("%s/%s: its namespace is being deleted; leaving it be", *key)
                return known or Snapshot(owner, inputs, previous, body_ref(body))
            if refusals:
                refused = refusal_verdict(refusals)
            else:
                deployment_generation = deployment.get("metadata", {}).get("generation", 0)
                rollout = evaluate_rollout(deployment)
        status = compose_status(previous, inputs, rollout, refused)
        if canary is not None:
            status = with_canary_status(status, spec, canary)
        waiting = canary is not None and canary.plan.waiting
        # A refused (or held) pass has not reached what it was built from: the next one must apply again.
        snapshot = Snapshot(owner, inputs, status, body_ref(body), deployment_generation,
                            () if refused or waiting else desired, replicas, refused)
        publish(runtime, api, owner, snapshot.body_ref, previous, status)
        runtime.snapshots[key] = snapshot
        if refused is not None:
            delay = runtime.refused_retry_delay(key)
            log.warning("%s/%s: %s; retrying in %gs", *key, refused.message, delay)
            raise ChildrenRefused(refused.message, delay=delay)
        runtime.applied(key)
        raise_if_waiting(canary)
        return snapshot


def _apply_children(
    runtime: Runtime,
    api: client.ApiClient,
    owner: Owner,
    spec: ModelServiceSpec,
    pool: NodePool,
    resolution: ModelResolution,
    keda: bool,
    http_add_on: bool,
    replicas: int | None,
    canary: CanaryPass | None,
) -> tuple[dict[str, Any], list[Refusal]]:
    """Apply every desired child this service controls or may create, delete the optional ones no longer
    wanted that it controls; (the live stable Deployment, what was refused). One refusal does not hold back
    the rest. `replicas`: the stable Deployment's (None: an autoscaler's).
    """
    mount_refusal = secrets_refusal(api, owner.namespace, spec) or model_cache_refusal(api, owner.namespace, spec, pool)
    if mount_refusal is not None:
        return {}, [mount_refusal]  # pods that cannot serve would replace pods that do: nothing is applied
    children = desired_children(owner, spec, resolution.model, pool, runtime.config, keda_installed=keda,
                                http_add_on_installed=http_add_on, replicas=replicas)
    if canary is not None:
        extra = canary_children(owner, spec, canary, pool, runtime.config)
        children.apply += extra.apply
        children.delete += extra.delete
    key = (owner.namespace, owner.name)
    deployment: dict[str, Any] = {}
    refusals: list[Refusal] = []
    for manifest in children.apply:
        if manifest["kind"] != "Deployment" and not deployment and scales_deployment(manifest):
            continue  # the Deployment was refused: an autoscaler would scale whatever holds its name
        try:
            live = _apply_child(runtime, api, manifest, owner)
        except kube.ChildConflict as conflict:
            refusals.append(conflict_refusal(conflict, owner))
            continue
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            refusals.append(refusal_of(exc, f"applying {manifest['kind']} {manifest['metadata']['name']}"))
            continue
        runtime.remember_child(key, (manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"]), live,
                               manifest)
        if manifest["kind"] == "Deployment" and manifest["metadata"]["name"] == owner.child_name:
            deployment = live
    for ref in children.delete:
        if not ref.look and not runtime.exists(ref, owner):
            continue
        try:
            kube.delete_controlled(api, ref.api_version, ref.kind, owner.namespace, ref.name, owner.uid)
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            if not isinstance(exc, ApiException) or exc.status != 404:  # 404: its API is gone (KEDA), so is it
                refusals.append(refusal_of(exc, f"deleting {ref.kind} {ref.name}"))
                continue
        runtime.remember_child(key, (ref.api_version, ref.kind, ref.name), None)
    return deployment, refusals


def scales_deployment(manifest: dict[str, Any]) -> bool:
    return (manifest.get("spec") or {}).get("scaleTargetRef", {}).get("kind") == "Deployment"


def conflict_refusal(conflict: kube.ChildConflict, owner: Owner) -> Refusal:
    """Someone else's object holds a child's name: a conflict, unless it is the ScaledObject the KEDA HTTP add-on
    made for this service's HTTPScaledObject (named after it), which the garbage collector removes once the
    HTTPScaledObject is deleted (a service no longer scaling from zero): then it is a wait."""
    holder = next((ref for ref in ((conflict.live or {}).get("metadata") or {}).get("ownerReferences") or []
                   if ref.get("controller")), {})
    if (holder.get("apiVersion"), holder.get("kind")) == HTTP_SCALED_OBJECT_REF and holder.get("name") == owner.child_name:
        return Refusal(APPLY_FAILED, f"{conflict}: the KEDA HTTP add-on's, removed with that HTTPScaledObject; waiting")
    return Refusal(CHILD_CONFLICT, str(conflict))


def refusal_of(exc: ApiException | urllib3.exceptions.HTTPError, what: str) -> Refusal:
    """A failed write, in the API server's words: rejected (4xx, it will not pass by itself) or failed."""
    if not isinstance(exc, ApiException) or exc.status is None:
        return Refusal(APPLY_FAILED, f"{what}: no answer from the API server: {exc}")
    rejected = 400 <= exc.status < 500 and exc.status not in (409, 429)
    return Refusal(APPLY_REJECTED if rejected else APPLY_FAILED, f"{what}: {kube.api_message(exc)}")


def hand_over_replicas(api: client.ApiClient, owner: Owner, stated: int, spec: ModelServiceSpec) -> None:
    """Keep the replicas an autoscaler is about to own instead of letting them fall to the default of one.

    Server-side apply resets a field its only manager stops stating. Applying the count under a second
    manager first keeps it owned, so the Deployment keeps its pods until the HPA or KEDA scales it.
    """
    bounds = spec.autoscaling
    replicas = min(max(stated, bounds.min_replicas, 1), bounds.max_replicas) if bounds else stated
    partial = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": owner.child_name, "namespace": owner.namespace},
        "spec": {"replicas": replicas},
    }
    try:
        live, version = kube.read_named(api, partial)
        if live is None or kube.controller_uid(live) != owner.uid:
            return  # none (deleted: nothing to keep), or someone else's: not ours to touch
        partial["metadata"]["resourceVersion"] = version
        client.AppsV1Api(api).patch_namespaced_deployment(
            owner.child_name, owner.namespace, partial, field_manager=HANDOVER_MANAGER, force=True,
            _content_type="application/apply-patch+yaml",
        )
    except ApiException as exc:
        # Deleted since it was read: nothing to keep, and a partial one cannot be created (422).
        if exc.status not in (404, 422):
            kube.raise_for_api_error(exc, f"handing the replicas of Deployment {owner.child_name} to the autoscaler")


class NamespaceTerminating(Exception):
    """The service's namespace is being deleted: nothing may be created in it, and nothing needs to be."""


def _apply_child(runtime: Runtime, api: client.ApiClient, manifest: dict[str, Any], owner: Owner) -> dict[str, Any]:
    what = f"applying {manifest['kind']} {manifest['metadata']['name']}"
    try:
        return kube.apply_controlled(api, manifest, owner.uid)
    except ApiException as exc:
        if kube.namespace_terminating(exc):
            raise NamespaceTerminating(what) from exc
        discovery = runtime.optional_api(manifest["apiVersion"])
        if exc.status == 404 and discovery is not None:
            discovery.forget()  # uninstalled since discovery last looked (KEDA, its HTTP add-on): look again, soon
            raise kopf.TemporaryError(f"{what}: the API {manifest['apiVersion']} is gone", delay=1) from exc
        raise


def refresh_status(runtime: Runtime, api: client.ApiClient, key: Key, deployment: dict[str, Any]) -> None:
    """The status-only pass: the Deployment moved, nothing else did."""
    with runtime.lock(key):
        snapshot = runtime.snapshots.get(key)
        if snapshot is None or deployment.get("metadata", {}).get("generation", 0) < snapshot.deployment_generation:
            return
        rollout = evaluate_rollout(deployment) if snapshot.inputs.resolution.model is not None else None
        status = compose_status(snapshot.status, snapshot.inputs, rollout, snapshot.refused)
        # Queued before this process's first full pass (at a start), it may find a canary: its part stays.
        status = keep_canary_status(snapshot.status, status)
        publish(runtime, api, snapshot.owner, snapshot.body_ref, snapshot.status, status)
        runtime.snapshots[key] = dataclasses.replace(snapshot, status=status)


def sync(runtime: Runtime, key: Key) -> None:
    """Work-queue entry: the full pass when asked for, else the status-only pass.

    Deployment progress of a service this process has not had a pass for yet is left alone: its own handler's
    pass (creation, or resume after a restart) is under way and reads the Deployment when it applies it.
    """
    with runtime.lock(key):
        full, deployment = runtime.take_requests(key)
        try:
            if full:
                body = read_custom(runtime.api, ModelService.plural, *key)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    runtime.forget(key)
                    return
                reconcile(runtime, body, force=True)
            elif deployment is not None and key in runtime.snapshots:
                refresh_status(runtime, runtime.api, key, deployment)
        except kopf.PermanentError:
            raise
        except Exception:
            runtime.want_full_pass(key)  # the retry must not lose what was asked for
            raise
