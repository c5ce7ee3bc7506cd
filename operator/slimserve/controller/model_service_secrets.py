"""Whether the Secrets a ModelService's pods mount can serve: each exists and holds the entries its spec needs.

Checked before the server pods are rolled, so a missing Secret or entry is a condition on the ModelService
instead of pods that cannot start (the server refuses to start without its files: it never falls back to
plain text, nor to serving without auth). Two Secrets are checked: `spec.tls.secretName` (tls.crt, tls.key,
and ca.crt with clientAuth) and `spec.auth.apiKeysSecret` (at least one key entry; the server still checks
each entry's value when it reads them).

Only a Secret's metadata is read, never its values: the names of its data keys are in `managedFields`, which
every write through the API server records. The operator needs `get` on secrets for that (RBAC cannot grant
metadata alone), which gives it no reach it lacks: it may already create Deployments whose pods mount any
Secret of the namespace. It still cannot list or watch Secrets. A Secret whose managedFields were cleared
cannot be checked this way; it is let through and the server reports what is missing in its log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slimserve.api.model_service import ModelServiceSpec, TlsSpec
from slimserve.api.workload import AUTH_API_KEYS, TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE
from slimserve.controller import kube
from slimserve.controller.model_service_status import (
    API_KEYS_SECRET_INVALID,
    API_KEYS_SECRET_MISSING,
    APPLY_REJECTED,
    TLS_SECRET_INVALID,
    TLS_SECRET_MISSING,
    Refusal,
)


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


def read_refusal(exc: ApiException, what: str) -> Refusal:
    """A read of what the pods need refused by the operator's rights (403: the chart grants `get`) is a refusal
    in status; any other API error is raised as `kube.raise_for_api_error` says."""
    if exc.status == 403:
        return Refusal(APPLY_REJECTED, f"{what}: {kube.api_message(exc)}")
    kube.raise_for_api_error(exc, what)
    raise exc


def secret_refusal(
    api: client.ApiClient, namespace: str, field: str, name: str, reasons: tuple[str, str],
    problem: Callable[[set[str]], str | None],
) -> Refusal | None:
    """Why the pods must not be rolled with Secret `name` (named by spec `field`), or None when it looks servable.

    `reasons` are the (missing, invalid) condition reasons; `problem(keys)` says what the Secret's data keys
    lack, None when nothing."""
    try:
        found = kube.read_metadata(api, "v1", "Secret", namespace, name)
    except ApiException as exc:
        return read_refusal(exc, f"reading the metadata of Secret {namespace}/{name}")
    missing_reason, invalid_reason = reasons
    if found is None:
        return Refusal(missing_reason, f"{field}: Secret {name!r} does not exist in namespace {namespace!r}; "
                                       "waiting for it")
    keys = data_keys(found.get("metadata") or {})
    lacks = None if keys is None else problem(keys)
    return None if lacks is None else Refusal(invalid_reason, f"{field}: Secret {name!r} {lacks}")


def needed_tls_keys(tls: TlsSpec) -> list[str]:
    return [TLS_CERT_FILE, TLS_KEY_FILE] + ([TLS_CA_FILE] if tls.client_auth != "none" else [])


def _tls_problem(tls: TlsSpec) -> Callable[[set[str]], str | None]:
    def problem(keys: set[str]) -> str | None:
        missing = [key for key in needed_tls_keys(tls) if key not in keys]
        if not missing:
            return None
        why = f" (clientAuth {tls.client_auth} verifies client certificates with it)" if TLS_CA_FILE in missing else ""
        return f"has no {', '.join(missing)}{why}"

    return problem


def _api_keys_problem(keys: set[str]) -> str | None:
    # The server skips dot-named files of the volume (its own links), so such an entry is no key.
    if any(not key.startswith(".") for key in keys):
        return None
    return "has no key entries: add one per key, named after it, valued sha256:<64 hex digits> (the key's SHA-256)"


def secrets_refusal(api: client.ApiClient, namespace: str, spec: ModelServiceSpec) -> Refusal | None:
    """The first Secret the spec names that the pods could not serve with, or None (also when none is named)."""
    if spec.tls is not None:
        refusal = secret_refusal(api, namespace, "spec.tls.secretName", spec.tls.secret_name,
                                 (TLS_SECRET_MISSING, TLS_SECRET_INVALID), _tls_problem(spec.tls))
        if refusal is not None:
            return refusal
    if spec.auth is not None and spec.auth.mode == AUTH_API_KEYS:
        return secret_refusal(api, namespace, "spec.auth.apiKeysSecret", spec.auth.api_keys_secret.name,
                              (API_KEYS_SECRET_MISSING, API_KEYS_SECRET_INVALID), _api_keys_problem)
    return None
