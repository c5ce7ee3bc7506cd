"""The pod of a batch/v1 Job the operator runs (compression, batch inference), and its access to its own status.

Every such pod is hardened the same way: non-root, a read-only root filesystem with emptyDir scratch and
cache, no service links, the node pool's placement, the claims its URIs name mounted (only the output's
writable), S3 credentials as named Secret keys, and a token only for the ServiceAccount whose Role lets it
patch the status of its one resource.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from slimserve.api import GROUP
from slimserve.api.common import ResourceRequirements
from slimserve.api.storage import S3Spec
from slimserve.api.uri import pvc_claim
from slimserve.controller.builders import (
    hardened_container_security_context,
    hardened_pod_security_context,
    pool_placement,
)
from slimserve.controller.config import Image, NodePool, OperatorConfig

SCRATCH_DIR = "/tmp"
CACHE_DIR = "/var/cache/slimserve"
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
PYTHON_UNBUFFERED = {"name": "PYTHONUNBUFFERED", "value": "1"}  # progress lines reach the log as they happen


def metadata(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels}


def status_access(*, account: str, namespace: str, labels: dict[str, str], plural: str, resource_name: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding that let a pod read and patch the status of one resource."""
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(account, namespace, labels),
            # The pod opts in itself; nothing else using this account gets a token by accident.
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata(account, namespace, labels),
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": [f"{plural}/status"],
                    "resourceNames": [resource_name],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(account, namespace, labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    ]


def s3_credentials_env(s3: S3Spec | None) -> list[dict[str, Any]]:
    """The S3 credentials Secret's two keys by name, not envFrom: nothing else the Secret holds reaches the pod."""
    secret = s3.credentials_secret if s3 else None
    if secret is None:
        return []
    return [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key}}} for key in S3_SECRET_KEYS]


def job_pod_resources(given_spec: ResourceRequirements | None, pool: NodePool, config: OperatorConfig) -> dict[str, Any]:
    """The spec's resources; the configuration's request and limit for CPU or memory the spec names neither
    of (Guaranteed with the shipped defaults); the pool's GPUs as a limit."""
    given = given_spec.to_json() if given_spec else {}
    defaults = config.compressor_resources
    requests, limits = dict(given.get("requests") or {}), dict(given.get("limits") or {})
    for resource in ("cpu", "memory"):
        if resource in requests or resource in limits:
            continue  # the user's values win, as given
        if resource in (defaults.requests or {}):
            requests[resource] = defaults.requests[resource]
        if resource in (defaults.limits or {}):
            limits[resource] = defaults.limits[resource]
    if pool.gpu_resource_name:
        limits.setdefault(pool.gpu_resource_name, pool.gpus_per_pod)
    return {key: values for key, values in (("requests", requests), ("limits", limits)) if values}


def pvc_claims(uris: Iterable[tuple[str, str]], *, writable_field: str) -> dict[str, bool]:
    """Claims named by pvc:// URIs ((field, uri) pairs) -> mounted read-only? Only `writable_field`'s is writable."""
    claims: dict[str, bool] = {}
    for field, uri in uris:
        claim = pvc_claim(uri)
        if claim is None:
            continue
        claims[claim] = claims.get(claim, True) and field != writable_field
    return dict(sorted(claims.items()))


def _claim_volumes(claims: dict[str, bool]) -> list[dict[str, Any]]:
    # Volumes are numbered, not named after claims: claim names may hold dots and run to 253 characters.
    return [
        {"name": f"pvc-{index}", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}
        for index, (claim, read_only) in enumerate(claims.items())
    ]


def _claim_mounts(claims: dict[str, bool], root: str) -> list[dict[str, Any]]:
    return [
        {"name": f"pvc-{index}", "mountPath": f"{root.rstrip('/')}/{claim}", "readOnly": read_only}
        for index, (claim, read_only) in enumerate(claims.items())
    ]


def job_pod_spec(
    *,
    config: OperatorConfig,
    pool: NodePool,
    service_account: str,
    container_name: str,
    image: Image,
    args: list[str],
    env: list[dict[str, Any]],
    resources: dict[str, Any],
    claims: dict[str, bool],
) -> dict[str, Any]:
    """The pod spec of a Job's pod that runs `slimserve ARGS` and patches its own resource's status."""
    return {
        "restartPolicy": "Never",
        "serviceAccountName": service_account,
        "automountServiceAccountToken": True,  # the pod patches its resource's status
        "enableServiceLinks": False,
        "securityContext": hardened_pod_security_context(config),
        "containers": [
            {
                "name": container_name,
                "image": image.reference,
                "imagePullPolicy": image.pull_policy,
                "command": ["slimserve"],
                "args": args,
                "env": env,
                "resources": resources,
                "volumeMounts": [
                    {"name": "scratch", "mountPath": SCRATCH_DIR},
                    {"name": "cache", "mountPath": CACHE_DIR},
                    *_claim_mounts(claims, config.pvc_mount_root),
                ],
                "securityContext": hardened_container_security_context(),
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "cache", "emptyDir": {}},
            *_claim_volumes(claims),
        ],
        **pool_placement(pool, config),
    }
