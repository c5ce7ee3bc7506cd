"""A CompressionJob's (or a BatchInference's) children are only ever its own.

`apply_child` applies a child only where the CompressionJob controls it (`kube.apply_controlled`); an object
of the child's name that another controls, or no one does, is left as it is and raised as `Blocked`
(reason ChildConflict, naming the object and its holder), as is an apply the API server refuses (reason
ApplyFailed, with the server's message). The handler puts either in the status and retries after
`retry_delay`. An earlier CompressionJob of the same name leaves its objects behind until the garbage
collector removes them: those are waited for, not reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from slimserve.api import CompressionJob
from slimserve.controller import kube
from slimserve.controller.backoff import doubling_delay

# Reasons of Succeeded=False while a generation's Job cannot be made yet; retried with a doubling delay.
CHILD_CONFLICT = "ChildConflict"
APPLY_FAILED = "ApplyFailed"
BLOCKED_RETRY_FIRST_SECONDS = 2
BLOCKED_RETRY_MAX_SECONDS = 120


@dataclass(frozen=True)
class Owner:
    name: str
    uid: str
    kind: str = CompressionJob.kind


class Blocked(Exception):
    """A child cannot be applied until something outside the operator changes; `reason` goes to Succeeded."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def retry_delay(retry: int) -> float:
    """Seconds before the next try of a blocked reconcile: doubling from the first, capped."""
    return doubling_delay(BLOCKED_RETRY_FIRST_SECONDS, retry, BLOCKED_RETRY_MAX_SECONDS)


def apply_child(api, manifest: dict[str, Any], owner: Owner) -> None:
    """Create or update `manifest` only where this CompressionJob controls it; anything else raises Blocked."""
    meta = manifest["metadata"]
    try:
        kube.apply_controlled(api, manifest, owner.uid)
    except kube.ChildConflict as conflict:
        if _earlier_namesake(conflict.live, owner):
            raise _wait_for_collection(manifest, owner) from None
        raise Blocked(CHILD_CONFLICT, str(conflict)) from None
    except ApiException as exc:
        if exc.status in (409, 429):
            raise  # a race or throttling: retried soon, nothing to tell
        raise Blocked(APPLY_FAILED, f"{manifest['kind']} {meta['name']}: {_api_message(exc)}") from None


def check_controlled(obj: dict[str, Any], owner: Owner) -> None:
    """As `kube.apply_controlled` decides, for an object that is not applied again (a Job is immutable): pass
    for this CompressionJob's own, wait for an earlier namesake's to be collected, anyone else's (or no one's)
    is a conflict."""
    if kube.controller_uid(obj) == owner.uid:
        return
    if _earlier_namesake(obj, owner):
        raise _wait_for_collection(obj, owner)
    meta = obj["metadata"]
    conflict = kube.ChildConflict(obj["kind"], meta["name"], meta["namespace"], kube.holder_of(obj))
    raise Blocked(CHILD_CONFLICT, str(conflict))


def _earlier_namesake(obj: dict[str, Any], owner: Owner) -> bool:
    """Controlled by an owner of this kind and name that is gone (a name holds one object at a time), so the
    garbage collector is about to remove it."""
    refs = obj["metadata"].get("ownerReferences") or []
    ref = next((ref for ref in refs if ref.get("controller")), {})
    return ref.get("kind") == owner.kind and ref.get("name") == owner.name and ref.get("uid") != owner.uid


def _wait_for_collection(obj: dict[str, Any], owner: Owner) -> kopf.TemporaryError:
    what = f"{obj['kind']} {obj['metadata']['name']}"
    return kopf.TemporaryError(f"{what} belongs to an earlier {owner.kind} of this name; waiting for it to go", delay=3)


def _api_message(exc: ApiException) -> str:
    """The API server's own message, else the HTTP status and reason."""
    return kube.server_message(exc) or f"{exc.status} {exc.reason}"
