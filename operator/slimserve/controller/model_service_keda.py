"""KEDA, an optional API: noticed coming and going, and its ScaledObjects kept right, without a watch.

Kopf is not asked to watch ScaledObjects or KEDA's CRD: a Kopf watcher whose CRD is deleted can fail with
404 and take the operator down with it, and one whose CRD appears may never start (Kopf rescans API
discovery on CRD events, which can come before discovery lists the new kind). Instead a task on Kopf's event
loop, every few seconds while any ModelService is known: asks API discovery whether `keda.sh/v1alpha1
scaledobjects` is served (no rights needed, so a namespaced operator can too), lists the ScaledObjects the
operator made, and queues a full pass for every service whose autoscaler is not what its last pass made: KEDA
came or went, its ScaledObject was deleted or edited by hand, or one is left over from an earlier metric. The
KEDA HTTP add-on's `http.keda.sh/v1alpha1 httpscaledobjects` (services scaling from zero) are looked after the
same way in the same round.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slimserve.controller.backoff import doubling_delay
from slimserve.controller.builders.model_service import CHILD_SELECTOR, controller_owner
from slimserve.controller.builders.http_scaled_object import HTTP_ADD_ON_GROUP, HTTP_ADD_ON_PLURAL, HTTP_ADD_ON_VERSION
from slimserve.controller.model_service_state import KEDA_GROUP, KEDA_PLURAL, KEDA_VERSION, Key, Runtime
from slimserve.controller.model_service_status import HTTP_SCALED_OBJECT, SCALE_TO_ZERO_UNAVAILABLE

log = logging.getLogger(__name__)

# Failed rounds in a row wait twice as long each time, up to this many seconds.
FAILED_ROUND_CAP = 60.0


@dataclass(frozen=True)
class ListedKind:
    """A child kind Kopf does not watch, listed every round instead; `reason`: the AutoscalingReady reason of a
    service that has one."""

    group: str
    version: str
    plural: str
    kind: str
    reason: str


SCALED_OBJECTS = ListedKind(KEDA_GROUP, KEDA_VERSION, KEDA_PLURAL, "ScaledObject", "ScaledObject")
HTTP_SCALED_OBJECTS = ListedKind(HTTP_ADD_ON_GROUP, HTTP_ADD_ON_VERSION, HTTP_ADD_ON_PLURAL, "HTTPScaledObject",
                                 HTTP_SCALED_OBJECT)


def wants_scaled_object(runtime: Runtime, key: Key, kind: ListedKind = SCALED_OBJECTS) -> bool | None:
    """Whether the last pass of this service made a child of `kind`; None when it has had none (or no autoscaling)."""
    snapshot = runtime.snapshots.get(key)
    verdict = snapshot.inputs.autoscaling if snapshot else None
    return None if verdict is None else verdict.reason == kind.reason


def keda_mismatches(runtime: Runtime, installed: bool) -> list[Key]:
    """Services scaling on concurrency whose last pass assumed the opposite about KEDA's API (one refused scale
    to zero runs KEDA's ScaledObject from one replica, or one fixed replica without it)."""
    refused_zero = [key for key, snapshot in list(runtime.snapshots.items())
                    if snapshot.inputs.autoscaling is not None
                    and snapshot.inputs.autoscaling.reason == SCALE_TO_ZERO_UNAVAILABLE
                    and snapshot.keda_assumed not in (None, installed)]
    return _mismatches(runtime, installed, present="ScaledObject", absent="KedaNotInstalled") + refused_zero


def http_add_on_mismatches(runtime: Runtime, installed: bool) -> list[Key]:
    """Services scaling to zero whose last pass assumed the opposite about the HTTP add-on's API."""
    return _mismatches(runtime, installed, present=HTTP_SCALED_OBJECT, absent=SCALE_TO_ZERO_UNAVAILABLE)


def _mismatches(runtime: Runtime, installed: bool, *, present: str, absent: str) -> list[Key]:
    stale = []
    for key, snapshot in list(runtime.snapshots.items()):
        verdict = snapshot.inputs.autoscaling
        if verdict is not None and verdict.reason in (present, absent) and (verdict.reason == present) != installed:
            stale.append(key)
    return stale


def sweep_scaled_objects(runtime: Runtime, listed: Iterable[dict[str, Any]], kind: ListedKind = SCALED_OBJECTS) -> list[Key]:
    """Record which services have a child of `kind` (a ScaledObject); the services whose one is missing, edited or
    stale."""
    present: dict[Key, dict[str, Any]] = {}
    for item in listed:
        meta = item.get("metadata") or {}
        owner = controller_owner(meta)
        if owner:
            present[(meta.get("namespace"), owner)] = item
    runtime.set_scaled_objects(set(present), kind.kind)
    stale = [key for key in list(runtime.snapshots) if wants_scaled_object(runtime, key, kind) and key not in present]
    for key, item in present.items():
        wanted = wants_scaled_object(runtime, key, kind)
        if key in runtime.snapshots and not wanted:
            stale.append(key)  # left from an earlier metric (or a pass while KEDA was away)
        elif wanted:
            if runtime.changed_since_applied(key, (f"{kind.group}/{kind.version}", kind.kind, item["metadata"]["name"]), item):
                stale.append(key)  # edited by hand
    return stale


def list_scaled_objects(api: client.ApiClient, namespaces: set[str], kind: ListedKind = SCALED_OBJECTS) -> list[dict[str, Any]]:
    """The operator's children of `kind` (ScaledObjects): one list over the cluster, or per namespace without
    cluster-wide rights."""
    objects = client.CustomObjectsApi(api)
    try:
        return objects.list_cluster_custom_object(
            kind.group, kind.version, kind.plural, label_selector=CHILD_SELECTOR
        ).get("items") or []
    except ApiException as exc:
        if exc.status != 403:
            raise
    items: list[dict[str, Any]] = []
    for namespace in sorted(namespaces):
        items += objects.list_namespaced_custom_object(
            kind.group, kind.version, namespace, kind.plural, label_selector=CHILD_SELECTOR
        ).get("items") or []
    return items


def check_keda(runtime: Runtime) -> list[Key]:
    """One round (blocking API calls): the services whose autoscaler is not what their last pass made."""
    keda, add_on = runtime.keda.refresh(runtime.api), runtime.http_add_on.refresh(runtime.api)
    stale = keda_mismatches(runtime, keda) + http_add_on_mismatches(runtime, add_on)
    namespaces = {namespace for namespace, _ in list(runtime.snapshots)}
    for kind, installed in ((SCALED_OBJECTS, keda), (HTTP_SCALED_OBJECTS, add_on)):
        if installed:
            stale += sweep_scaled_objects(runtime, list_scaled_objects(runtime.api, namespaces, kind), kind)
        else:
            runtime.set_scaled_objects(set(), kind.kind)  # without the API there are none
    return list(dict.fromkeys(stale))


def next_round_in(interval: float, failures: int, cap: float = FAILED_ROUND_CAP) -> float:
    """Seconds until the next round: `interval`, doubled for each failed round in a row, up to `cap`."""
    return doubling_delay(interval, failures - 1, max(cap, interval))


async def follow_keda(runtime: Runtime, requeue: Callable[[Key], None], interval: float) -> None:
    """The loop, a task on Kopf's event loop until cancelled (see the module's docstring); each round's API
    calls run in a thread. A failed round (the API server briefly away) is tried again, backing off."""
    failures = 0
    while True:
        await asyncio.sleep(next_round_in(interval, failures))
        if not runtime.snapshots:
            continue
        try:
            stale = await asyncio.to_thread(check_keda, runtime)
        except Exception as exc:
            failures += 1
            log.info("checking KEDA's ScaledObjects failed (%d in a row): %s", failures, exc)
            continue
        failures = 0
        for key in stale:
            requeue(key)
