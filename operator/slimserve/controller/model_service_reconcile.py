"""Reconciliation of one ModelService: resolve the model, apply the children, delete stale ones, write status.

Level-based: every pass states the whole desired state (server-side apply makes an unchanged object a
no-op). Two paths share it:

- the full pass (`reconcile`), from the ModelService's own handlers (Kopf retries them) and from the work
  queue when something it depends on changed: a child was edited or deleted, its CompressionJob finished,
  KEDA's API appeared or went;
- the status-only pass (`refresh_status`), when the Deployment's status moved: the status is recomputed from
  what the last full pass saw plus the Deployment from the watch, so a rollout costs one status write.

The operator keeps a little memory per service (`Snapshot`: what it wrote; the fingerprints of the children it
applied). It is a cache: after a restart the resume handlers rebuild it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from slimserve.api import GROUP, VERSION
from slimserve.api.model_service import ModelService, ModelServiceSpec
from slimserve.controller import kube
from slimserve.controller.builders.model_service import (
    ChildRef,
    Owner,
    desired_children,
)
from slimserve.controller.config import NodePool, OperatorConfig
from slimserve.controller.model_service_events import EventRecorder, transition_events
from slimserve.controller.model_service_status import (
    ModelResolution,
    Rollout,
    StatusInputs,
    autoscaling_verdict,
    compose_status,
    evaluate_rollout,
    inputs_for,
    invalid_status,
    resolve_compression_job,
    resolve_uri,
    status_differs,
)

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name) of a ModelService
COMPRESSION_JOBS = "compressionjobs"
KEDA_GROUP, KEDA_VERSION, KEDA_PLURAL = "keda.sh", "v1alpha1", "scaledobjects"


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body["metadata"]
    return meta["namespace"], meta["name"]


def fingerprint(body: Mapping[str, Any]) -> str:
    """What a hand edit of a child changes and its controllers leave alone: spec, labels, owners."""
    meta = body.get("metadata") or {}
    essence = {"spec": body.get("spec"), "labels": meta.get("labels"), "owners": meta.get("ownerReferences")}
    return hashlib.sha256(json.dumps(essence, sort_keys=True, default=str).encode()).hexdigest()


def child_id(api_version: str, kind: str, namespace: str, name: str) -> tuple[str, str, str, str]:
    return api_version, kind, namespace, name


@dataclass
class Snapshot:
    """What the last full pass decided and wrote for one ModelService."""

    owner: Owner
    inputs: StatusInputs
    status: dict[str, Any]
    body_ref: dict[str, Any]  # apiVersion/kind/metadata for Events
    deployment_generation: int = 0  # of the Deployment as last applied: older watch events are stale
    desired: tuple = ()  # what the children were built from: (uid, generation, model, KEDA installed)


class KedaDiscovery:
    """Whether KEDA's ScaledObject API is served, by API discovery (no rights needed), cached for `ttl` seconds."""

    def __init__(self, ttl: float = 10.0) -> None:
        self._ttl = ttl
        self._lock = threading.Lock()
        self._known: tuple[float, bool] | None = None

    def installed(self, api: client.ApiClient) -> bool:
        with self._lock:
            if self._known and time.monotonic() - self._known[0] < self._ttl:
                return self._known[1]
        return self.refresh(api)

    def refresh(self, api: client.ApiClient) -> bool:
        try:
            resources = client.CustomObjectsApi(api).get_api_resources(KEDA_GROUP, KEDA_VERSION)
            found = any(r.name == KEDA_PLURAL for r in resources.resources or [])
        except ApiException as exc:
            if exc.status != 404:
                kube.raise_for_api_error(exc, "discovering KEDA's API")
            found = False
        with self._lock:
            self._known = (time.monotonic(), found)
        return found

    def forget(self) -> None:
        with self._lock:
            self._known = None


# Optional children whose existence the operator learns from Kopf indices: (namespace, owner name) -> names.
OwnedIndex = Mapping[tuple[str, str], Any]


@dataclass
class Runtime:
    """The controller's process-wide state, shared by Kopf's handler threads and the work queue."""

    config: OperatorConfig | None = None
    api: client.ApiClient | None = None
    owned: dict[str, OwnedIndex] = field(default_factory=dict)  # kind -> Kopf index of that kind
    keda: KedaDiscovery = field(default_factory=KedaDiscovery)
    events: EventRecorder = field(default_factory=EventRecorder)
    snapshots: dict[Key, Snapshot] = field(default_factory=dict)
    fingerprints: dict[tuple[str, str, str, str], str] = field(default_factory=dict)
    latest_deployments: dict[Key, dict[str, Any]] = field(default_factory=dict)
    full_pass_wanted: set[Key] = field(default_factory=set)
    _locks: dict[Key, threading.RLock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def lock(self, key: Key) -> threading.RLock:
        """Serialises the passes of one service (re-entrant: a queued pass holds it around the full pass)."""
        with self._guard:
            return self._locks.setdefault(key, threading.RLock())

    def want_full_pass(self, key: Key) -> None:
        with self._guard:
            self.full_pass_wanted.add(key)

    def take_requests(self, key: Key) -> tuple[bool, dict[str, Any] | None]:
        with self._guard:
            full = key in self.full_pass_wanted
            self.full_pass_wanted.discard(key)
            return full, self.latest_deployments.pop(key, None)

    def note_deployment(self, key: Key, deployment: dict[str, Any]) -> None:
        with self._guard:
            self.latest_deployments[key] = deployment

    def forget(self, key: Key) -> None:
        namespace, _ = key
        with self._guard:
            self.snapshots.pop(key, None)
            self.full_pass_wanted.discard(key)
            self.latest_deployments.pop(key, None)
            self._locks.pop(key, None)
            snapshot_children = [k for k in self.fingerprints if k[2] == namespace and k[3] == key[1]]
            for child in snapshot_children:
                self.fingerprints.pop(child, None)

    def exists(self, ref: ChildRef, owner: Owner) -> bool:
        index = self.owned.get(ref.kind)
        return bool(index is not None and index.get((owner.namespace, owner.name)))


# ---- API calls ----------------------------------------------------------------------------------------


def read_model_service(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, ModelService.plural, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        kube.raise_for_api_error(exc, f"reading ModelService {namespace}/{name}")
        raise


def read_compression_job(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, COMPRESSION_JOBS, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        kube.raise_for_api_error(exc, f"reading CompressionJob {namespace}/{name}")
        raise


def write_status(api: client.ApiClient, owner: Owner, status: dict[str, Any]) -> bool:
    """Merge-patch the status subresource; False when the ModelService is gone."""
    try:
        client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            owner.namespace,
            ModelService.plural,
            owner.name,
            {"status": status},
            _content_type="application/merge-patch+json",
        )
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        kube.raise_for_api_error(exc, f"writing the status of ModelService {owner.namespace}/{owner.name}")
        raise


def _api_call(what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except ApiException as exc:
        kube.raise_for_api_error(exc, what)
        raise


# ---- the passes ---------------------------------------------------------------------------------------


def body_ref(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        "apiVersion": body.get("apiVersion", f"{GROUP}/{VERSION}"),
        "kind": body.get("kind", ModelService.kind),
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
    }


def _publish(runtime: Runtime, api: client.ApiClient, snapshot_before: dict[str, Any] | None, snapshot: Snapshot) -> None:
    """Write the status when it changed and post an Event per condition transition."""
    if status_differs(snapshot_before, snapshot.status):
        if not write_status(api, snapshot.owner, snapshot.status):
            return
        for event in transition_events(snapshot_before, snapshot.status):
            runtime.events.post(api, snapshot.body_ref, event)


def _reject(runtime: Runtime, api: client.ApiClient, body: Mapping[str, Any], reason: str, message: str) -> None:
    owner = Owner.from_body(body)
    previous = body.get("status") or {}
    status = invalid_status(previous, body["metadata"].get("generation", 0), reason, message)
    if status_differs(previous, status):
        if write_status(api, owner, status):
            for event in transition_events(previous, status):
                runtime.events.post(api, body_ref(body), event)
    raise kopf.PermanentError(message)


def parse_spec(body: Mapping[str, Any]) -> ModelServiceSpec:
    return ModelServiceSpec.from_json(dict(body.get("spec") or {}))


def spec_error(exc: ValidationError) -> str:
    """One line per problem, each naming its field under spec."""
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        problems.append(f"spec.{location}: {error['msg']}" if location else error["msg"])
    return "; ".join(problems)


def resolve_model(api: client.ApiClient, namespace: str, spec: ModelServiceSpec) -> ModelResolution:
    if spec.model.uri:
        return resolve_uri(spec.model.uri)
    job_name = spec.model.compression_job_ref.name
    return resolve_compression_job(job_name, read_compression_job(api, namespace, job_name))


def reconcile(runtime: Runtime, body: Mapping[str, Any], *, force: bool = False) -> Snapshot:
    """The full pass. Raises kopf.PermanentError for a spec it cannot act on (after saying so in status).

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
        keda = runtime.keda.installed(api) if metric == "concurrency" else False
        inputs = inputs_for(owner, generation, resolution, autoscaling_verdict(metric, keda_installed=keda),
                            config.cluster_domain)
        desired = (owner.uid, generation, resolution.model, keda)
        if not force and known is not None and known.desired == desired and known.inputs == inputs:
            return known
        rollout: Rollout | None = None
        deployment_generation = known.deployment_generation if known else 0
        if resolution.model is not None:
            deployment = _apply_children(runtime, api, owner, spec, pool, resolution, keda)
            deployment_generation = deployment.get("metadata", {}).get("generation", 0)
            rollout = evaluate_rollout(deployment)
        status = compose_status(previous, inputs, rollout)
        snapshot = Snapshot(owner, inputs, status, body_ref(body), deployment_generation, desired)
        _publish(runtime, api, previous, snapshot)
        runtime.snapshots[key] = snapshot
        return snapshot


def _apply_children(
    runtime: Runtime,
    api: client.ApiClient,
    owner: Owner,
    spec: ModelServiceSpec,
    pool: NodePool,
    resolution: ModelResolution,
    keda: bool,
) -> dict[str, Any]:
    """Apply every desired child, delete the optional ones no longer wanted; the live Deployment."""
    children = desired_children(owner, spec, resolution.model, pool, runtime.config, keda_installed=keda)
    deployment: dict[str, Any] = {}
    for manifest in children.apply:
        meta = manifest["metadata"]
        live = _apply_child(runtime, api, manifest)
        runtime.fingerprints[child_id(manifest["apiVersion"], manifest["kind"], owner.namespace, meta["name"])] = (
            fingerprint(live)
        )
        if manifest["kind"] == "Deployment":
            deployment = live
    for ref in children.delete:
        if runtime.exists(ref, owner):
            _api_call(
                f"deleting {ref.kind} {ref.name}",
                lambda r=ref: kube.delete(api, r.api_version, r.kind, owner.namespace, r.name),
            )
            runtime.fingerprints.pop(child_id(ref.api_version, ref.kind, owner.namespace, ref.name), None)
    return deployment


def _apply_child(runtime: Runtime, api: client.ApiClient, manifest: dict[str, Any]) -> dict[str, Any]:
    what = f"applying {manifest['kind']} {manifest['metadata']['name']}"
    try:
        return kube.apply(api, manifest)
    except ApiException as exc:
        if exc.status == 404 and manifest["apiVersion"] == f"{KEDA_GROUP}/{KEDA_VERSION}":
            runtime.keda.forget()  # KEDA was uninstalled since discovery last looked: look again, soon
            raise kopf.TemporaryError(f"{what}: KEDA's API is gone", delay=1) from exc
        kube.raise_for_api_error(exc, what)
        raise


def refresh_status(runtime: Runtime, api: client.ApiClient, key: Key, deployment: dict[str, Any]) -> None:
    """The status-only pass: the Deployment moved, nothing else did."""
    with runtime.lock(key):
        snapshot = runtime.snapshots.get(key)
        if snapshot is None or deployment.get("metadata", {}).get("generation", 0) < snapshot.deployment_generation:
            return
        rollout = evaluate_rollout(deployment) if snapshot.inputs.resolution.model is not None else None
        status = compose_status(snapshot.status, snapshot.inputs, rollout)
        updated = dataclasses.replace(snapshot, status=status)
        _publish(runtime, api, snapshot.status, updated)
        runtime.snapshots[key] = updated


def keda_mismatches(runtime: Runtime, keys: list[Key], installed: bool) -> list[Key]:
    """Services whose last pass assumed the opposite about KEDA's API (those without one have a pass coming)."""
    stale = []
    for key in keys:
        snapshot = runtime.snapshots.get(key)
        verdict = snapshot.inputs.autoscaling if snapshot else None
        if verdict is not None and (verdict.reason == "ScaledObject") != installed:
            stale.append(key)
    return stale


def follow_keda_api(
    runtime: Runtime, dependents: Callable[[], list[Key]], requeue: Callable[[Key], None], stop: threading.Event,
    interval: float,
) -> None:
    """While any service scales on concurrency, check every `interval` seconds whether KEDA's API came or went.

    Discovery instead of a watch of CRDs: it needs no cluster-wide rights, so it works for a namespaced operator.
    """
    while not stop.wait(interval):
        keys = dependents()
        if not keys:
            continue
        try:
            installed = runtime.keda.refresh(runtime.api)
        except Exception as exc:  # the API server may be briefly away; the next round retries
            log.info("checking for KEDA's API failed: %s", exc)
            continue
        for key in keda_mismatches(runtime, keys, installed):
            requeue(key)


def sync(runtime: Runtime, key: Key) -> None:
    """Work-queue entry: the full pass when asked for, else the status-only pass.

    Deployment progress of a service this process has not had a pass for yet is left alone: its own handler's
    pass (creation, or resume after a restart) is under way and reads the Deployment when it applies it.
    """
    with runtime.lock(key):
        full, deployment = runtime.take_requests(key)
        try:
            if full:
                body = read_model_service(runtime.api, *key)
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
