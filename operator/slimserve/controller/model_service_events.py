"""Kubernetes Events for a ModelService's condition transitions, posted off the reconcile path.

Events come from both Kopf's handlers and the work queue's threads, so they are written with the API client
(core/v1 Events, what `kubectl describe` shows) by one background thread instead of through Kopf's
per-handler posting context. A failed post is logged and dropped: Events are best-effort by design.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slimserve.controller import kube
from slimserve.controller.conditions import TRUE, condition_changed, find_condition, now_rfc3339
from slimserve.controller.labels import MANAGED_BY

log = logging.getLogger(__name__)

# Condition types whose transitions are announced, in the order they are announced.
ANNOUNCED = ("ModelAvailable", "AutoscalingReady", "Ready")
# Reasons that need someone's attention.
WARNING_REASONS = frozenset(
    {
        "InvalidSpec",
        "UnknownNodePool",
        "CompressionJobNotFound",
        "CompressionFailed",
        "KedaNotInstalled",
        "ProgressDeadlineExceeded",
        "ChildConflict",
        "ApplyRejected",
        "ApplyFailed",
    }
)


@dataclass(frozen=True)
class Transition:
    type: str  # Normal or Warning
    reason: str
    message: str


def transition_events(before: dict[str, Any] | None, after: dict[str, Any]) -> list[Transition]:
    """One Event per announced condition whose status or reason changed.

    A condition's first value is announced only when it is Ready=True or a warning: a new service's "model
    found, rolling out" says nothing its "Ready" a moment later does not, and each Event is a write to etcd
    (hundreds of services are created at once).
    """
    previous = (before or {}).get("conditions") or []
    current = after.get("conditions") or []
    events = []
    for type_ in ANNOUNCED:
        if not condition_changed(previous, current, type_):
            continue
        condition = find_condition(current, type_)
        reason = condition.get("reason") or type_
        first = find_condition(previous, type_) is None
        if first and not (type_ == "Ready" and condition.get("status") == TRUE) and reason not in WARNING_REASONS:
            continue
        kind = "Warning" if reason in WARNING_REASONS else "Normal"
        verb = "is" if condition.get("status") == TRUE else "is not"
        message = f"{type_} {verb} true: {condition.get('message') or reason}"
        events.append(Transition(kind, reason, message[:1024]))
    return events


class EventRecorder:
    """Posts Events from a queue on a daemon thread, started on first use."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[client.ApiClient, dict[str, Any], Transition] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._instance = os.environ.get("HOSTNAME") or socket.gethostname()

    def post(self, api: client.ApiClient, ref: dict[str, Any], transition: Transition) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="model-service-events", daemon=True)
                self._thread.start()
        self._queue.put((api, ref, transition))

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(5)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            api, ref, transition = item
            try:
                event = client.CoreV1Event.from_dict(self._event(ref, transition))
                client.CoreV1Api(api).create_namespaced_event(ref["metadata"]["namespace"], event)
            except ApiException as exc:
                if not kube.namespace_terminating(exc):  # then the Event would go with its namespace anyway
                    log.warning("could not post Event %s for %s: %s", transition.reason, ref["metadata"]["name"], exc)
            except (OSError, ValueError) as exc:
                log.warning("could not post Event %s for %s: %s", transition.reason, ref["metadata"]["name"], exc)

    def _event(self, ref: dict[str, Any], transition: Transition) -> dict[str, Any]:
        meta = ref["metadata"]
        now = now_rfc3339()
        return {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": ref["apiVersion"],
                "kind": ref["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": transition.type,
            "reason": transition.reason,
            "message": transition.message,
            "source": {"component": MANAGED_BY},
            "reportingComponent": MANAGED_BY,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
