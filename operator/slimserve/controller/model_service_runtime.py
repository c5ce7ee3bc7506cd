"""The ModelService controller's runtime on the operator's memo, started and stopped with Kopf's lifecycle.

Kopf runs the ModelService's own handlers (and retries them); what Kopf does not do is turn an event of
another object (a child, a CompressionJob, KEDA's API) into a retried pass of the service it concerns. That is
the work queue's job: keys merged while queued, one pass per service at a time, back-off on failure, and
Deployment progress answered with a status-only pass. Beside it run the KEDA loop and the Event poster, as
tasks on Kopf's event loop. `start` runs from an `on.startup` handler and `stop` from `on.cleanup`, so all of
it ends with the operator.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from slimserve.controller.model_service_keda import follow_keda
from slimserve.controller.model_service_reconcile import sync
from slimserve.controller.model_service_state import Key, OwnedIndex, Runtime
from slimserve.controller.workqueue import WorkQueue

log = logging.getLogger(__name__)

# Threads of the work queue: each runs one service's pass at a time (blocking API calls).
QUEUE_WORKERS = 4
KEDA_CHECK_SECONDS = 10.0


def queue_of(runtime: Runtime) -> WorkQueue[Key]:
    if runtime.queue is None:
        raise RuntimeError("the ModelService controller has not been started")
    return runtime.queue


def queue_full_pass(runtime: Runtime, key: Key, delay: float = 0.0) -> None:
    """A full pass of the service, now or after `delay` seconds."""
    runtime.want_full_pass(key)
    queue_of(runtime).add(key, delay)


def queue_status_pass(runtime: Runtime, key: Key) -> None:
    """A pass that takes what was asked for: the status-only pass unless a full one is wanted too."""
    queue_of(runtime).add(key)


def forget(runtime: Runtime, key: Key) -> None:
    """The service was deleted."""
    runtime.forget(key)
    queue_of(runtime).forget(key)


async def start(runtime: Runtime, owned: dict[str, OwnedIndex], *, keda_interval: float = KEDA_CHECK_SECONDS) -> None:
    """Start the work queue, the Event poster and the KEDA loop; from the running event loop."""
    runtime.owned = owned
    runtime.queue = WorkQueue(functools.partial(sync, runtime), workers=QUEUE_WORKERS, name="model-services")
    runtime.queue.start()
    runtime.events.start()
    requeue = functools.partial(queue_full_pass, runtime)
    runtime.background = [asyncio.create_task(follow_keda(runtime, requeue, keda_interval), name="model-services-keda")]


async def stop(runtime: Runtime) -> None:
    """Stop the loops, let the queue's passes under way finish, post the Events queued; idempotent."""
    tasks, runtime.background = runtime.background, []
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if runtime.queue is not None:
        await asyncio.to_thread(runtime.queue.stop)
    await runtime.events.stop()
