"""Status writes of the operator's custom resources: one writer for both, a merge patch of `/status`.

How concurrent writes are kept right depends on who writes, and the caller says so with `resource_version`:

- Shared status (a CompressionJob's: the operator and the compression pod): every write carries the
  `resourceVersion` it was computed from (`update_status`); a write based on a stale read gets 409 Conflict
  and is recomputed from a fresh read, never lost or clobbering the other's.
- One writer (a ModelService's: only the operator, one pass per service at a time, each computed from its
  own last write): `resource_version=None`, no precondition. A precondition would only fail on the
  operator's own metadata patches (Kopf's annotations) and cost a read per write.

Used by the operator and by the compression pod, so it imports the kubernetes client only (no Kopf).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slimserve.api import GROUP, VERSION

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
CONFLICT = 409
# Worth another try: a conflict, throttling, an API server or proxy hiccup.
TRANSIENT_STATUSES = frozenset({409, 429, 500, 502, 503, 504})

Derive = Callable[[dict[str, Any]], "dict[str, Any] | None"]


def read_status(api: client.ApiClient, plural: str, namespace: str, name: str) -> dict[str, Any]:
    """The whole object, read through `/status` (all that a pod allowed only `compressionjobs/status` may GET)."""
    return client.CustomObjectsApi(api).get_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name)


def patch_status(
    api: client.ApiClient,
    plural: str,
    namespace: str,
    name: str,
    status: dict[str, Any],
    *,
    resource_version: str | None,
) -> dict[str, Any]:
    """Merge-patch `status`; 409 Conflict when the object is no longer at `resource_version` (None: the
    status has one writer, so no precondition; see the module's docstring)."""
    body: dict[str, Any] = {"status": status}
    if resource_version is not None:
        body["metadata"] = {"resourceVersion": resource_version}
    return client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, plural, name, body, _content_type=MERGE_PATCH
    )


def update_status(
    api: client.ApiClient,
    plural: str,
    namespace: str,
    name: str,
    derive: Derive,
    *,
    attempts: int = 5,
    retry_on: Collection[int] = (CONFLICT,),
    backoff_seconds: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Read the object, `derive(object)` a status merge patch (None: nothing to write), patch it.

    Returns (the object as read, the patch written or None). A status in `retry_on` starts over from a
    fresh read, up to `attempts` times in all, waiting `backoff_seconds`, doubled each time, in between;
    the last failure is raised.
    """
    for attempt in range(1, attempts + 1):
        try:
            current = read_status(api, plural, namespace, name)
            patch = derive(current)
            if patch is None:
                return current, None
            patch_status(api, plural, namespace, name, patch, resource_version=current["metadata"]["resourceVersion"])
            return current, patch
        except ApiException as exc:
            if exc.status not in retry_on or attempt == attempts:
                raise
            logger.info(
                "status of %s %s/%s: %s %s, attempt %d of %d; retrying",
                plural, namespace, name, exc.status, exc.reason, attempt, attempts,
            )
            if backoff_seconds:
                sleep(backoff_seconds * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # the loop returns or raises
