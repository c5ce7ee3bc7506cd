"""Kubernetes Events for a ModelService's condition transitions, posted off the reconcile path.

Events come from both Kopf's handlers and the work queue's threads, so they are written with the API client
(core/v1 Events, what `kubectl describe` shows) by one task on Kopf's event loop instead of through Kopf's
per-handler posting context, which the work queue's threads do not have. A failed post is logged and dropped: Events are best-effort by design.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slimserve.controller import kube
from slimserve.controller.canary_rollback import CANARY_ROLLED_BACK, ERROR_RATE_EXCEEDED, METRICS_UNAVAILABLE
from slimserve.controller.conditions import TRUE, UNKNOWN, condition_changed, find_condition, now_rfc3339
from slimserve.controller.labels import MANAGED_BY
from slimserve.controller.model_service_status import (
    API_KEYS_SECRET_INVALID,
    API_KEYS_SECRET_MISSING,
    APPLY_FAILED,
    APPLY_REJECTED,
    CHILD_CONFLICT,
    MODEL_CACHE_CLAIM_MISSING,
    TLS_SECRET_INVALID,
    TLS_SECRET_MISSING,
)

log = logging.getLogger(__name__)

# Condition types whose transitions are announced, in the order they are announced.
ANNOUNCED = ("ModelAvailable", "AutoscalingReady", "Ready", CANARY_ROLLED_BACK)
# Reasons that need someone's attention.
WARNING_REASONS = frozenset(
    {
        "InvalidSpec",
        "UnknownNodePool",
        "CompressionJobNotFound",
        "CompressionFailed",
        "KedaNotInstalled",
        "ScaleToZeroUnavailable",
        "ProgressDeadlineExceeded",
        CHILD_CONFLICT,
        APPLY_REJECTED,
        APPLY_FAILED,
        MODEL_CACHE_CLAIM_MISSING,
        TLS_SECRET_MISSING,
        TLS_SECRET_INVALID,
        API_KEYS_SECRET_MISSING,
        API_KEYS_SECRET_INVALID,
        ERROR_RATE_EXCEEDED,
        METRICS_UNAVAILABLE,
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
        verb = {TRUE: "is true", UNKNOWN: "is unknown"}.get(condition.get("status"), "is not true")
        message = f"{type_} {verb}: {condition.get('message') or reason}"
        events.append(Transition(kind, reason, message[:1024]))
    return events


class EventRecorder:
    """Posts Events from a queue, on a task of Kopf's event loop between `start` and `stop`.

    `post` may be called from any thread (Kopf's handler threads, the work queue's); the API call itself runs
    in a thread of the loop's executor, one at a time, in the order posted. Before `start` and after `stop`
    an Event is dropped (logged): there is no loop to post it from.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[client.ApiClient, dict[str, Any], Transition] | None] | None = None
        self._task: asyncio.Task | None = None
        self._instance = os.environ.get("HOSTNAME") or socket.gethostname()

    def start(self) -> None:
        """Start posting, from the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._task = self._loop.create_task(self._run(self._queue), name="model-service-events")

    async def stop(self, timeout: float = 5.0) -> None:
        """Post what is queued (for up to `timeout` seconds), then stop."""
        task, queue, loop, self._task, self._loop = self._task, self._queue, self._loop, None, None
        if task is None or queue is None or loop is None:
            return
        loop.call_soon(queue.put_nowait, None)  # after the posts other threads have scheduled already
        try:
            await asyncio.wait_for(task, timeout)
        except asyncio.TimeoutError:
            log.warning("stopped posting Events with %d still queued", queue.qsize())

    def post(self, api: client.ApiClient, ref: dict[str, Any], transition: Transition) -> None:
        loop, queue = self._loop, self._queue
        if loop is None or queue is None:
            log.info("not posting Event %s for %s: not started", transition.reason, ref["metadata"]["name"])
            return
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (api, ref, transition))
        except RuntimeError:  # the loop closed in between: the operator is going away
            log.info("not posting Event %s for %s: stopping", transition.reason, ref["metadata"]["name"])

    async def _run(self, queue: asyncio.Queue) -> None:
        while (item := await queue.get()) is not None:
            try:
                await asyncio.to_thread(self._create, *item)
            except Exception:  # one Event that cannot be made must not end the posting of all later ones
                log.exception("could not post Event %s", item[2].reason)

    def _create(self, api: client.ApiClient, ref: dict[str, Any], transition: Transition) -> None:
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
