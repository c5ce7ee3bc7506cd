"""Pure manifest builders: a resource's spec and the operator's configuration in, plain dicts out.

One module per resource. Builders never call the API, so the manifests are unit-tested without a cluster and
reconciliation can state the whole desired object each time (server-side apply does the rest).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from slimserve.api.common import LocalObjectReference
from slimserve.api.workload import DEFAULTS, HUB_ENDPOINT
from slimserve.controller.config import NodePool, OperatorConfig

HF_TOKEN_KEY = "HF_TOKEN"  # the key of a model source's hfTokenSecret, and the variable huggingface_hub reads

DNS_LABEL_MAX = 63
_HASH_LENGTH = 8


def bounded_name(base: str, suffix: str = "", *, limit: int = DNS_LABEL_MAX) -> str:
    """`base + suffix` when it fits `limit`, else `base` cut short plus a hash of the whole, then `suffix`.

    Deterministic, so a reconcile after a restart finds the object it made before; the hash keeps two long
    names that share a prefix apart. Also usable for label values (63 characters at most).
    """
    whole = f"{base}{suffix}"
    if len(whole) <= limit:
        return whole
    digest = hashlib.sha256(whole.encode()).hexdigest()[:_HASH_LENGTH]
    keep = limit - len(suffix) - len(digest) - 1
    if keep < 1:
        raise ValueError(f"suffix {suffix!r} leaves no room for a name within {limit} characters")
    head = re.sub(r"[-.]+$", "", base[:keep])  # a name must not end in '-' or '.' before the hash
    return f"{head}-{digest}{suffix}"


# ---- pieces every pod the operator makes shares ---------------------------------------------------------

def hardened_pod_security_context(config: OperatorConfig) -> dict[str, Any]:
    """The configuration's: by default non-root with numeric ids (so the kubelet can check runAsNonRoot) and the
    runtime's seccomp profile; without the ids where the platform assigns them."""
    return config.pod_security_context.to_manifest()


def pod_log_format(config: OperatorConfig) -> str | None:
    """The log format to write into a pod's env: None (nothing) for the pods' own default, so that a default
    configuration leaves every pod template, and so every Deployment, as it was."""
    return None if config.log_format == DEFAULTS.log_format else config.log_format


def hardened_container_security_context() -> dict[str, Any]:
    """No privilege escalation, no capabilities, a read-only root filesystem (scratch goes to an emptyDir)."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pool_device(pool: NodePool) -> str:
    """SLIMSERVE_DEVICE of a pod on `pool`: cuda on a pool that declares a GPU resource (a pod that cannot see
    its GPU then fails instead of running on the CPU), cpu on the others (not auto: a pod never uses a GPU
    of its node that it was not given)."""
    return "cuda" if pool.has_gpu else "cpu"


def pool_placement(pool: NodePool, config: OperatorConfig) -> dict[str, Any]:
    """Pod spec fields that put a pod on `pool`: nodeSelector, tolerations, and the registry's pull secrets."""
    placement: dict[str, Any] = {}
    if pool.node_selector:
        placement["nodeSelector"] = dict(pool.node_selector)
    if pool.tolerations:
        placement["tolerations"] = [dict(toleration) for toleration in pool.tolerations]
    if config.image_pull_secrets:
        placement["imagePullSecrets"] = [{"name": secret} for secret in config.image_pull_secrets]
    return placement


def hub_env(config: OperatorConfig, token_secret: LocalObjectReference | None = None) -> list[dict[str, Any]]:
    """What an hf:// source needs: the configured Hub mirror, and the token by reference (it never appears in
    the pod template, only the Secret's name does)."""
    env = [HUB_ENDPOINT.entry(config.hub_endpoint)] if config.hub_endpoint else []
    if token_secret is not None:
        env.append({"name": HF_TOKEN_KEY, "valueFrom": {"secretKeyRef": {"name": token_secret.name, "key": HF_TOKEN_KEY}}})
    return env
