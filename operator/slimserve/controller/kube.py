"""Talking to the API server: server-side apply of built manifests, and errors mapped to Kopf's.

Server-side apply makes reconciliation level-based and idempotent: the operator states the whole object it
wants every time; fields it no longer sets are removed, fields others own (HPA-managed replicas) are left.
"""

from __future__ import annotations

from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

FIELD_MANAGER = "slimserve-operator"

# (group/version, kind) -> plural, for the kinds the operator writes.
_PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("apps/v1", "Deployment"): "deployments",
    ("batch/v1", "Job"): "jobs",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
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


def read(api: client.ApiClient, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    try:
        return _call(api, "GET", object_path(api_version, kind, namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def delete(
    api: client.ApiClient, api_version: str, kind: str, namespace: str, name: str, *, propagation: str = "Background"
) -> bool:
    """Delete the object (children by the garbage collector); False when it was already gone."""
    try:
        _call(
            api,
            "DELETE",
            object_path(api_version, kind, namespace, name),
            body={"propagationPolicy": propagation},
        )
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def _call(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    body: Any = None,
    query: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    data, _, _ = api.call_api(
        path,
        method,
        query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        response_type="object",
        auth_settings=["BearerToken"],
        _return_http_data_only=False,
        _preload_content=True,
    )
    return data


def raise_for_api_error(exc: ApiException, what: str) -> None:
    """Turn an API failure into Kopf's retry semantics: transient errors retry, the rest are permanent."""
    if exc.status in (409, 429) or exc.status is None or exc.status >= 500:
        raise kopf.TemporaryError(f"{what}: API server said {exc.status} {exc.reason}; retrying", delay=5) from exc
    raise kopf.PermanentError(f"{what}: API server refused it: {exc.status} {exc.reason}: {exc.body}") from exc
