"""What the ModelService controller remembers between passes, shared by Kopf's threads and the work queue.

It lives on the operator's memo (`OperatorMemo.model_services`), one per operator, started and stopped with
Kopf's lifecycle (`model_service_runtime`). A cache, never the truth: after a restart the resume handlers
rebuild it from the cluster. Per service it holds the last status written (`Snapshot`), the fingerprints of
the children it applied (to tell a hand edit from the children's own controllers at work), the latest
Deployment seen and whether a full pass was asked for.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slimserve.controller import kube
from slimserve.controller.backoff import doubling_delay
from slimserve.controller.builders.http_scaled_object import HTTP_ADD_ON_GROUP, HTTP_ADD_ON_PLURAL, HTTP_ADD_ON_VERSION
from slimserve.controller.builders.model_service import ChildRef, Owner
from slimserve.controller.config import OperatorConfig
from slimserve.controller.model_service_events import EventRecorder
from slimserve.controller.model_service_status import StatusInputs, Verdict
from slimserve.controller.workqueue import WorkQueue

Key = tuple[str, str]  # (namespace, name) of a ModelService
ChildId = tuple[str, str, str]  # (apiVersion, kind, name) of a child in its service's namespace
KEDA_GROUP, KEDA_VERSION, KEDA_PLURAL = "keda.sh", "v1alpha1", "scaledobjects"
# Retries of a pass whose children were refused: doubling from the first, then every `cap` seconds.
REFUSED_RETRY_FIRST, REFUSED_RETRY_CAP = 2.0, 60.0


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body["metadata"]
    return meta["namespace"], meta["name"]


def fingerprint(body: Mapping[str, Any], spec_fields: frozenset[str] | None = None) -> str:
    """What a hand edit of a child changes and its controllers leave alone: spec, labels, owners. With
    `spec_fields`, only those fields of the spec: the ones the operator sets (an autoscaler sets a Deployment's
    replicas when the operator leaves them out)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec")
    if spec_fields is not None and isinstance(spec, Mapping):
        spec = {name: value for name, value in spec.items() if name in spec_fields}
    essence = {"spec": spec, "labels": meta.get("labels"), "owners": meta.get("ownerReferences")}
    return hashlib.sha256(json.dumps(essence, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ChildPrint:
    """A child as last applied: the fingerprint of the fields the operator set."""

    digest: str
    spec_fields: frozenset[str] | None

    @classmethod
    def of(cls, live: Mapping[str, Any], manifest: Mapping[str, Any] | None) -> "ChildPrint":
        spec = (manifest or {}).get("spec")
        fields = frozenset(spec) if isinstance(spec, Mapping) else None
        return cls(fingerprint(live, fields), fields)

    def matches(self, body: Mapping[str, Any]) -> bool:
        return fingerprint(body, self.spec_fields) == self.digest


@dataclass(frozen=True)
class Snapshot:
    """What the last full pass decided and wrote for one ModelService."""

    owner: Owner
    inputs: StatusInputs
    status: dict[str, Any]
    body_ref: dict[str, Any]  # apiVersion/kind/metadata, for Events
    deployment_generation: int = 0  # of the Deployment as last applied: older watch events are stale
    desired: tuple = ()  # what the children were built from: (uid, generation, model, KEDA, HTTP add-on installed)
    stated_replicas: int | None = None  # the Deployment's replicas as last applied; None: an autoscaler's
    refused: Verdict | None = None  # why the last pass could not apply every child (Ready says so until fixed)

    @property
    def keda_assumed(self) -> bool | None:
        """Whether the last pass that applied found KEDA's API; None when it applied nothing."""
        return self.desired[3] if self.desired else None


class ApiDiscovery:
    """Whether an optional API (KEDA's ScaledObjects, the HTTP add-on's HTTPScaledObjects) is served, by API
    discovery (no rights needed), cached for `ttl` seconds."""

    def __init__(self, group: str = KEDA_GROUP, version: str = KEDA_VERSION, plural: str = KEDA_PLURAL,
                 ttl: float = 10.0) -> None:
        self._group, self._version, self._plural = group, version, plural
        self._ttl = ttl
        self._lock = threading.Lock()
        self._known: tuple[float, bool] | None = None

    @property
    def api_version(self) -> str:
        return f"{self._group}/{self._version}"

    def installed(self, api: client.ApiClient) -> bool:
        with self._lock:
            if self._known and time.monotonic() - self._known[0] < self._ttl:
                return self._known[1]
        return self.refresh(api)

    def refresh(self, api: client.ApiClient) -> bool:
        try:
            resources = client.CustomObjectsApi(api).get_api_resources(self._group, self._version)
            found = any(r.name == self._plural for r in resources.resources or [])
        except ApiException as exc:
            if exc.status != 404:
                kube.raise_for_api_error(exc, f"discovering the API {self._group}/{self._version}")
            found = False
        with self._lock:
            self._known = (time.monotonic(), found)
        return found

    def forget(self) -> None:
        with self._lock:
            self._known = None


# A Kopf index of optional children by their service: (namespace, service name) -> child names.
OwnedIndex = Mapping[tuple[str, str], Any]


@dataclass
class Runtime:
    """The controller's process-wide state."""

    config: OperatorConfig | None = None
    api: client.ApiClient | None = None
    owned: dict[str, OwnedIndex] = field(default_factory=dict)  # kind -> Kopf index of that kind
    keda: ApiDiscovery = field(default_factory=ApiDiscovery)
    http_add_on: ApiDiscovery = field(
        default_factory=lambda: ApiDiscovery(HTTP_ADD_ON_GROUP, HTTP_ADD_ON_VERSION, HTTP_ADD_ON_PLURAL)
    )
    events: EventRecorder = field(default_factory=EventRecorder)
    snapshots: dict[Key, Snapshot] = field(default_factory=dict)
    fingerprints: dict[Key, dict[ChildId, ChildPrint]] = field(default_factory=dict)
    latest_deployments: dict[Key, dict[str, Any]] = field(default_factory=dict)
    full_pass_wanted: set[Key] = field(default_factory=set)
    # Kind (ScaledObject, HTTPScaledObject: not watched) -> the services with one, as last listed.
    listed: dict[str, set[Key]] = field(default_factory=dict)
    refused_passes: dict[Key, int] = field(default_factory=dict)  # passes refused in a row, for the back-off
    # Passes asked for by watches of other objects, and the loops beside the handlers: made on start.
    queue: WorkQueue[Key] | None = None
    background: list[asyncio.Task] = field(default_factory=list)
    _locks: dict[Key, threading.RLock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def lock(self, key: Key) -> threading.RLock:
        """Serialises the passes of one service (re-entrant: a queued pass holds it around the full pass)."""
        with self._guard:
            return self._locks.setdefault(key, threading.RLock())

    def want_full_pass(self, key: Key) -> None:
        with self._guard:
            self.full_pass_wanted.add(key)

    def note_deployment(self, key: Key, deployment: dict[str, Any]) -> None:
        with self._guard:
            self.latest_deployments[key] = deployment

    def take_requests(self, key: Key) -> tuple[bool, dict[str, Any] | None]:
        """(full pass wanted, latest Deployment seen), both cleared."""
        with self._guard:
            full = key in self.full_pass_wanted
            self.full_pass_wanted.discard(key)
            return full, self.latest_deployments.pop(key, None)

    def remember_child(self, key: Key, child: ChildId, live: Mapping[str, Any] | None,
                       manifest: Mapping[str, Any] | None = None) -> None:
        """The child as last applied from `manifest` (None: deleted by the operator)."""
        with self._guard:
            children = self.fingerprints.setdefault(key, {})
            if live is None:
                children.pop(child, None)
                self.listed.get(child[1], set()).discard(key)
            else:
                children[child] = ChildPrint.of(live, manifest)

    def knows_child(self, key: Key, child: ChildId) -> bool:
        with self._guard:
            return child in self.fingerprints.get(key, {})

    def changed_since_applied(self, key: Key, child: ChildId, body: Mapping[str, Any]) -> bool:
        """Whether a child this process applied differs from it in the fields the operator set."""
        with self._guard:
            known = self.fingerprints.get(key, {}).get(child)
        return known is not None and not known.matches(body)

    def pass_under_way(self, key: Key) -> bool:
        """Whether another thread is in a pass of the service now: a child it is applying can be seen changed
        before the pass remembers what it applied."""
        lock = self.lock(key)
        if not lock.acquire(blocking=False):
            return True
        lock.release()
        return False

    def refused_retry_delay(self, key: Key) -> float:
        """Seconds before retrying a pass whose children were refused: grows with each refusal in a row."""
        with self._guard:
            count = self.refused_passes[key] = self.refused_passes.get(key, 0) + 1
        return doubling_delay(REFUSED_RETRY_FIRST, count - 1, REFUSED_RETRY_CAP)

    def applied(self, key: Key) -> None:
        with self._guard:
            self.refused_passes.pop(key, None)

    def optional_api(self, api_version: str) -> ApiDiscovery | None:
        """The discovery of an optional API (KEDA's, its HTTP add-on's) by a child's apiVersion; None for the rest."""
        return {self.keda.api_version: self.keda, self.http_add_on.api_version: self.http_add_on}.get(api_version)

    @property
    def scaled_objects(self) -> set[Key]:
        return self.listed.get("ScaledObject", set())

    def set_scaled_objects(self, owners: set[Key], kind: str = "ScaledObject") -> None:
        with self._guard:
            self.listed[kind] = owners

    def exists(self, ref: ChildRef, owner: Owner) -> bool:
        """Whether the optional child may exist: seen (Kopf's index of its kind, or the last list of its kind, for
        the (HTTP)ScaledObjects Kopf does not watch) or applied by this process."""
        key = (owner.namespace, owner.name)
        index = self.owned.get(ref.kind)
        with self._guard:
            listed = key in self.listed.get(ref.kind, set())
        seen = listed or (index is not None and bool(index.get(key)))
        return seen or self.knows_child(key, (ref.api_version, ref.kind, ref.name))

    def forget(self, key: Key) -> None:
        with self._guard:
            self.snapshots.pop(key, None)
            self.fingerprints.pop(key, None)
            self.full_pass_wanted.discard(key)
            self.latest_deployments.pop(key, None)
            for owners in self.listed.values():
                owners.discard(key)
            self.refused_passes.pop(key, None)
            self._locks.pop(key, None)
