"""Talking to the API server: server-side apply of built manifests, and errors mapped to Kopf's.

Server-side apply makes reconciliation level-based and idempotent: the operator states the whole object it
wants every time; fields it no longer sets are removed, fields others own (HPA-managed replicas) are left.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

FIELD_MANAGER = "slimserve-operator"

# (group/version, kind) -> plural, for the kinds the operator reads or writes.
_PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Pod"): "pods",
    ("v1", "Secret"): "secrets",  # metadata only (read_metadata)
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",  # metadata only (read_metadata)
    ("v1", "Service"): "services",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("apps/v1", "Deployment"): "deployments",
    ("batch/v1", "Job"): "jobs",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproutes",
    ("http.keda.sh/v1alpha1", "HTTPScaledObject"): "httpscaledobjects",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
}


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    plural = _PLURALS[(api_version, kind)]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


def apply(api: client.ApiClient, manifest: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply `manifest` (must carry apiVersion, kind, metadata.name and namespace)."""
    meta = manifest["metadata"]
    path = object_path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
    return _call(
        api,
        "PATCH",
        path,
        body=manifest,
        query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        content_type="application/apply-patch+yaml",
    )


# ---- children: applied only while this resource controls them --------------------------------------------

# A read-then-apply that lost a race to another writer (the object changed in between) is redone this often.
_RACE_ATTEMPTS = 3


class ChildConflict(Exception):
    """An object already holds the child's name and is not controlled by the resource applying it.

    `live` is that object as read, so a caller can look at it further without reading it again."""

    def __init__(self, kind: str, name: str, namespace: str, holder: str, live: dict[str, Any] | None = None) -> None:
        super().__init__(kind, name, namespace, holder)
        self.kind, self.name, self.namespace, self.holder = kind, name, namespace, holder
        self.live = live

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name} exists and is controlled by {self.holder}"


def controller_uid(obj: dict[str, Any]) -> str | None:
    """uid of the object's controller (the ownerReference with controller=true), if it has one."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def holder_of(obj: dict[str, Any]) -> str:
    """Who controls the object, in words: its controller, else the field manager that made it."""
    meta = obj.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return f"{ref.get('kind')} {ref.get('name')} (uid {ref.get('uid')})"
    entries = [e for e in meta.get("managedFields") or [] if e.get("subresource", "") == ""]
    if not entries:
        return "no controller"
    maker = min(entries, key=lambda entry: entry.get("time") or "")["manager"]
    return f'no controller (made by field manager "{maker}")'


def apply_controlled(api: client.ApiClient, manifest: dict[str, Any], owner_uid: str) -> dict[str, Any]:
    """Server-side apply `manifest` only when the object does not exist yet or is already controlled
    (ownerReferences with controller=true) by `owner_uid`; otherwise raise ChildConflict and change
    nothing. Returns the live object.

    The read and the apply are one optimistic transaction: the apply carries the resourceVersion the read saw
    as a precondition (409 when the object changed in between: read again). An absent object is read by a
    list, whose resourceVersion is older than any object created afterwards, and an apply that creates
    ignores the precondition: so an object made by someone else in between fails the apply (409) instead of
    being taken over, and the one the apply creates has the operator's Apply entry in managedFields (a later
    apply removes what it stops stating), which a create (POST) would record as an Update instead.

    Fields of what the operator states that other field managers hold (a hand edit) are taken back first,
    so that the apply restores them instead of adding beside them (see `reclaimed_managed_fields`).
    """
    meta = manifest["metadata"]
    kind, name, namespace = manifest["kind"], meta["name"], meta["namespace"]
    for attempt in range(1, _RACE_ATTEMPTS + 1):
        live, version = read_named(api, manifest)
        if live is not None:
            if controller_uid(live) != owner_uid:
                raise ChildConflict(kind, name, namespace, holder_of(live), live)
            reclaimed = reclaimed_managed_fields(live, manifest)
            if reclaimed is not None:
                live = _replace_managed_fields(api, manifest, version, reclaimed)
                version = live["metadata"]["resourceVersion"]
        body = copy.deepcopy(manifest)
        body["metadata"]["resourceVersion"] = version
        try:
            return apply(api, body)
        except ApiException as exc:
            if exc.status != 409 or attempt == _RACE_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def read_named(api: client.ApiClient, manifest: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(the object `manifest` names or None, the resourceVersion an apply must find) by one list: the
    operator's rights on its children are list, not get."""
    meta = manifest["metadata"]
    found = _call(
        api,
        "GET",
        object_path(manifest["apiVersion"], manifest["kind"], meta["namespace"]),
        query=[("fieldSelector", f"metadata.name={meta['name']}")],
    )
    items = found.get("items") or []
    if items:
        return items[0], items[0]["metadata"]["resourceVersion"]
    return None, found["metadata"]["resourceVersion"]


def _replace_managed_fields(
    api: client.ApiClient, manifest: dict[str, Any], version: str, entries: list[dict[str, Any]]
) -> dict[str, Any]:
    meta = manifest["metadata"]
    patch = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": version},
        {"op": "replace", "path": "/metadata/managedFields", "value": entries},
    ]
    return _call(
        api,
        "PATCH",
        object_path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"]),
        body=patch,
        query=[("fieldManager", FIELD_MANAGER)],
        content_type="application/json-patch+json",
    )


def delete_controlled(
    api: client.ApiClient, api_version: str, kind: str, namespace: str, name: str, owner_uid: str
) -> bool:
    """Delete the object only if `owner_uid` controls it (as read, by uid and resourceVersion preconditions);
    False when it is absent or someone else's."""
    live, _ = read_named(api, {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": namespace}})
    if live is None or controller_uid(live) != owner_uid:
        return False
    meta = live["metadata"]
    try:
        _call(
            api,
            "DELETE",
            object_path(api_version, kind, namespace, name),
            body={
                "propagationPolicy": "Background",
                "preconditions": {"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]},
            },
        )
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


# ---- taking back fields of a controlled child from other field managers ---------------------------------

# A field whose whole subtree the operator states (fieldsV1 marks what is under it as owned).
_WHOLE: dict[str, Any] = {}


def stated_fields(manifest: dict[str, Any]) -> dict[str, Any]:
    """The parts of an object the operator decides, as a fieldsV1 tree: each top-level field of spec (and of
    any other body field) whole, and in metadata only the label and annotation keys and the owner it states.
    A leaf `_WHOLE` stands for everything under it."""
    tree: dict[str, Any] = {}
    for key, value in manifest.items():
        if key in ("apiVersion", "kind", "metadata", "status"):
            continue
        tree[f"f:{key}"] = {f"f:{field}": _WHOLE for field in value} if isinstance(value, dict) else _WHOLE
    meta = manifest["metadata"]
    metadata: dict[str, Any] = {}
    for key in ("labels", "annotations"):
        if meta.get(key):
            metadata[f"f:{key}"] = {f"f:{name}": _WHOLE for name in meta[key]}
    if meta.get("ownerReferences"):
        metadata["f:ownerReferences"] = {_list_key({"uid": ref["uid"]}): _WHOLE for ref in meta["ownerReferences"]}
    if metadata:
        tree["f:metadata"] = metadata
    return tree


def _list_key(fields: dict[str, Any]) -> str:
    return "k:" + json.dumps(fields, sort_keys=True, separators=(",", ":"))


def _normal(key: str) -> str:
    """fieldsV1 keys of list elements (k:{...}) compared whatever the spacing and order of their JSON."""
    if key.startswith("k:"):
        try:
            return _list_key(json.loads(key[2:]))
        except ValueError:
            return key
    return key


def _split(owned: dict[str, Any], stated: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the part of `owned` under `stated`, the rest); "." (the node itself) stays with the rest.
    In fieldsV1 an owned leaf is an empty object, so emptiness alone does not mean "nothing"."""
    inside: dict[str, Any] = {}
    outside: dict[str, Any] = {}
    for key, sub in owned.items():
        match = stated.get(_normal(key)) if key != "." else None
        if match is None:
            outside[key] = sub
            continue
        if match is _WHOLE:
            inside[key] = sub
            continue
        taken, kept = _split(sub, match)
        if taken:
            inside[key] = taken
        if kept and set(kept) != {"."}:
            outside[key] = kept
    return inside, outside


def _union(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    merged = dict(a)
    for key, sub in b.items():
        merged[key] = _union(merged[key], sub) if key in merged else sub
    return merged


def reclaimed_managed_fields(live: dict[str, Any], manifest: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The live object's managedFields with what other managers hold of the stated fields moved to the
    operator's Apply entry; None when no other manager holds any.

    A hand edit (kubectl edit, a merge patch) makes its manager own what it changed: an edited port becomes
    a second list element the apply cannot remove (it never owned it) and then refuses (duplicate port name).
    Owning those fields again, the operator's apply removes what it does not state and restores the rest, as
    for any field it stopped stating. Entries of subresources (status, the autoscalers' scale) and of the
    operator's other managers (`slimserve-operator-*`) are left alone; an entry for another apiVersion only
    loses the fields (their paths may differ between versions).
    """
    stated = stated_fields(manifest)
    entries = (live.get("metadata") or {}).get("managedFields") or []
    ours = {"manager": FIELD_MANAGER, "operation": "Apply", "apiVersion": manifest["apiVersion"],
            "fieldsType": "FieldsV1", "fieldsV1": {}}
    kept: list[dict[str, Any]] = []
    changed = False
    for entry in entries:
        if _is_ours(entry, manifest["apiVersion"]):
            ours = {**entry, "fieldsV1": _union(ours["fieldsV1"], entry.get("fieldsV1") or {})}
            continue
        if entry.get("subresource", "") or entry.get("manager", "").startswith(f"{FIELD_MANAGER}-"):
            kept.append(entry)
            continue
        taken, rest = _split(entry.get("fieldsV1") or {}, stated)
        if not taken:
            kept.append(entry)
            continue
        changed = True
        if entry.get("apiVersion") == manifest["apiVersion"]:
            ours["fieldsV1"] = _union(ours["fieldsV1"], taken)
        if rest and set(rest) != {"."}:
            kept.append({**entry, "fieldsV1": rest})
    return [ours, *kept] if changed else None


def _is_ours(entry: dict[str, Any], api_version: str) -> bool:
    return (
        entry.get("manager") == FIELD_MANAGER
        and entry.get("operation") == "Apply"
        and entry.get("apiVersion") == api_version
        and not entry.get("subresource")
    )


def read(api: client.ApiClient, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    try:
        return _call(api, "GET", object_path(api_version, kind, namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def read_metadata(api: client.ApiClient, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The object's metadata alone (a PartialObjectMetadata: no spec, no data), or None when it does not exist."""
    try:
        return _call(api, "GET", object_path(api_version, kind, namespace, name), accept=_METADATA_ONLY)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


_METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


def list_objects(
    api: client.ApiClient, api_version: str, kind: str, namespace: str, *, label_selector: str
) -> list[dict[str, Any]]:
    """The objects in `namespace` whose labels match `label_selector` (one page: callers select a handful)."""
    found = _call(api, "GET", object_path(api_version, kind, namespace), query=[("labelSelector", label_selector)])
    return found.get("items") or []


def _call(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    body: Any = None,
    query: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
    accept: str = "application/json",
) -> dict[str, Any]:
    # The kubernetes client (v37) is generated by openapi-generator 7: serialize, send, deserialize as plain JSON.
    request = api.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": accept},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request)
    response.read()
    return api.response_deserialize(response, {"2XX": "object"}).data


def namespace_terminating(exc: ApiException) -> bool:
    """Whether the API refused a write because the namespace is being deleted (nothing more to do there)."""
    if exc.status != 403:
        return False
    try:
        causes = (json.loads(exc.body or "{}").get("details") or {}).get("causes") or []
    except (TypeError, ValueError):
        return False
    return any(cause.get("reason") == "NamespaceTerminating" for cause in causes)


def server_message(exc: ApiException) -> str | None:
    """The API server's own words for a failure: the message of the Status it answered with, if any."""
    try:
        return json.loads(exc.body or "{}").get("message") or None
    except (TypeError, ValueError, AttributeError):
        return None


def api_message(exc: ApiException) -> str:
    """The API server's own words for a failure, with the HTTP status."""
    return f"{exc.status} {server_message(exc) or exc.reason}"


def raise_for_api_error(exc: ApiException, what: str) -> None:
    """Turn an API failure into Kopf's retry semantics: transient errors retry, the rest are permanent."""
    if exc.status in (409, 429) or exc.status is None or exc.status >= 500:
        raise kopf.TemporaryError(f"{what}: API server said {exc.status} {exc.reason}; retrying", delay=5) from exc
    raise kopf.PermanentError(f"{what}: API server refused it: {exc.status} {exc.reason}: {exc.body}") from exc
