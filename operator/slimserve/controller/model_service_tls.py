"""Whether a ModelService's TLS Secret can serve: it exists and holds the keys `spec.tls` needs.

Checked before the server pods are rolled, so a missing Secret or key is a condition on the ModelService
instead of pods that cannot start (the server refuses to start without its files; it never falls back to
plain text).

Only the Secret's metadata is read, never its values: the names of its data keys are in `managedFields`, which
every write through the API server records. The operator needs `get` on secrets for that (RBAC cannot grant
metadata alone), which gives it no reach it lacks: it may already create Deployments whose pods mount any
Secret of the namespace. It still cannot list or watch Secrets. A Secret whose managedFields were cleared
cannot be checked this way; it is let through and the server reports a missing file in its log.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slimserve.api.model_service import TlsSpec
from slimserve.api.workload import TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE
from slimserve.controller import kube
from slimserve.controller.model_service_status import (
    APPLY_REJECTED,
    TLS_SECRET_INVALID,
    TLS_SECRET_MISSING,
    Refusal,
)


def needed_keys(tls: TlsSpec) -> list[str]:
    return [TLS_CERT_FILE, TLS_KEY_FILE] + ([TLS_CA_FILE] if tls.client_auth != "none" else [])


def data_keys(metadata: dict[str, Any]) -> set[str] | None:
    """The data keys some writer of the Secret set (`f:data` / `f:stringData` of managedFields); None when the
    metadata cannot tell (no managedFields)."""
    entries = metadata.get("managedFields") or []
    if not entries:
        return None
    keys: set[str] = set()
    for entry in entries:
        fields = entry.get("fieldsV1") or {}
        for section in ("f:data", "f:stringData"):
            keys.update(name.removeprefix("f:") for name in (fields.get(section) or {}) if name.startswith("f:"))
    return keys


def tls_secret_refusal(api: client.ApiClient, namespace: str, tls: TlsSpec | None) -> Refusal | None:
    """Why the pods must not be rolled with this Secret, or None when it looks servable (or there is no TLS)."""
    if tls is None:
        return None
    name = tls.secret_name
    try:
        found = kube.read_metadata(api, "v1", "Secret", namespace, name)
    except ApiException as exc:
        what = f"reading the metadata of Secret {namespace}/{name}"
        if exc.status == 403:  # the operator's rights: the chart grants get on secrets
            return Refusal(APPLY_REJECTED, f"{what}: {kube.api_message(exc)}")
        kube.raise_for_api_error(exc, what)
        raise
    if found is None:
        return Refusal(TLS_SECRET_MISSING, f"spec.tls.secretName: Secret {name!r} does not exist in namespace "
                                           f"{namespace!r}; waiting for it")
    keys = data_keys(found.get("metadata") or {})
    missing = [key for key in needed_keys(tls) if keys is not None and key not in keys]
    if not missing:
        return None
    why = f" (clientAuth {tls.client_auth} verifies client certificates with it)" if TLS_CA_FILE in missing else ""
    return Refusal(TLS_SECRET_INVALID, f"spec.tls.secretName: Secret {name!r} has no {', '.join(missing)}{why}")
