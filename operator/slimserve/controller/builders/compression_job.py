"""Manifests of a CompressionJob: the batch/v1 Job that runs `slimserve compress`, and the pod's API access.

Each generation of a CompressionJob gets its own Job (`<name>-g<generation>`), so a spec change never
mutates a running Job (a Job's pod template is immutable anyway) and an old pod is told apart from a new
one by its generation.

The spec reaches the pod as the environment variable SLIMSERVE_JOB_SPEC (JSON), not as a ConfigMap: the
Job's pod template is immutable, so the variable is a snapshot of exactly the generation the Job runs; a
ConfigMap could be edited under a running pod, would be one more object to create, own and clean up, and
one more permission. A spec is a few KiB at most (the CRD bounds every list), far below any limit.

The pod reports progress and results by patching its own CompressionJob's status, as a ServiceAccount made
for that CompressionJob alone: its Role allows `get` and `patch` on `compressionjobs/status` of that one
name and nothing else (see `slimserve.compression.status_sink`).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from slimserve.api import GROUP, CompressionJob, CompressionJobSpec
from slimserve.api.field_errors import field_errors
from slimserve.api.steps import GPU_ONLY_QUANTIZE_METHODS
from slimserve.api.uri import InvalidUri, parse_uri, pvc_claim
from slimserve.api.workload import CompressorEnv, job_spec_text
from slimserve.controller.builders import (
    bounded_name,
    hardened_container_security_context,
    hardened_pod_security_context,
    pod_log_format,
    pool_placement,
)
from slimserve.controller.config import NodePool, OperatorConfig
from slimserve.controller.labels import merge_labels, standard_labels

COMPONENT = "compressor"
CONTAINER_NAME = "compressor"
GENERATION_LABEL = f"{GROUP}/generation"
# A JSON object of annotations for the compression pod (sidecar opt-outs, autoscaler hints...).
POD_ANNOTATIONS_ANNOTATION = f"{GROUP}/pod-annotations"

SCRATCH_DIR = "/tmp"
CACHE_DIR = "/var/cache/slimserve"
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


class InvalidSpec(ValueError):
    """A spec the API server accepted that this operator cannot run; the message names the field."""


# ---- validation ---------------------------------------------------------------------------------------


def parse_compression_job_spec(raw: dict[str, Any]) -> CompressionJobSpec:
    """The spec as the model, or InvalidSpec naming each bad field (the CRD catches most of these first)."""
    try:
        return CompressionJobSpec.from_json(raw)
    except ValidationError as exc:
        raise InvalidSpec("; ".join(field_errors(exc, root=("spec",)))) from None


def parse_pod_annotations(annotations: dict[str, str] | None) -> dict[str, str]:
    """The pod annotations a CompressionJob asks for in its `slimserve.io/pod-annotations` annotation."""
    text = (annotations or {}).get(POD_ANNOTATIONS_ANNOTATION)
    if not text:
        return {}
    where = f"metadata.annotations[{POD_ANNOTATIONS_ANNOTATION}]"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidSpec(f"{where}: not JSON: {exc.msg}") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidSpec(f'{where}: expected a JSON object of strings, e.g. {{"sidecar.istio.io/inject": "false"}}')
    return value


def check_runnable(spec: CompressionJobSpec, config: OperatorConfig) -> None:
    """Raise InvalidSpec listing every semantic problem the CRD's schema cannot see."""
    problems: list[str] = []
    pool = config.node_pools.get(spec.node_pool)
    if pool is None:
        known = ", ".join(sorted(config.node_pools)) or "none"
        problems.append(f"spec.nodePool: unknown node pool {spec.node_pool!r} (known: {known})")
    elif not pool.has_gpu:
        for index, step in enumerate(spec.steps):
            if step.quantize and step.quantize.method in GPU_ONLY_QUANTIZE_METHODS:
                problems.append(
                    f"spec.steps[{index}].quantize.method: {step.quantize.method} needs a GPU node pool; "
                    f"pool {spec.node_pool!r} has no GPU"
                )
    for field, uri in _storage_uris(spec):
        problems.extend(_uri_problems(field, uri))
    if spec.output.uri.startswith("file://"):
        problems.append(
            "spec.output.uri: file:// is inside the compression pod and lost when it ends; use pvc:// or s3://"
        )
    if problems:
        raise InvalidSpec("; ".join(problems))


def _storage_uris(spec: CompressionJobSpec) -> list[tuple[str, str]]:
    uris = [("spec.model.uri", spec.model.uri), ("spec.output.uri", spec.output.uri)]
    if spec.evaluation.dataset is not None:
        uris.append(("spec.evaluation.dataset.uri", spec.evaluation.dataset.uri))
    return uris


def _uri_problems(field: str, uri: str) -> list[str]:
    try:
        parse_uri(uri)  # the rules the pod's storage applies
    except InvalidUri as exc:
        return [f"{field}: {exc}"]
    return []


# ---- names and labels ---------------------------------------------------------------------------------


def job_name(name: str, generation: int) -> str:
    # 63, not 253: the Job controller copies the name into its pods' job-name label.
    return bounded_name(name, f"-g{generation}")


def service_account_name(name: str) -> str:
    return bounded_name(name, "-compressor")


def compression_labels(name: str) -> dict[str, str]:
    return standard_labels(instance=bounded_name(name), component=COMPONENT)


def status_target(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def _metadata(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels}


# ---- the pod's access to its own status ---------------------------------------------------------------


def build_access(*, name: str, namespace: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding that let the pod read and patch its own CompressionJob's status."""
    account = service_account_name(name)
    labels = compression_labels(name)
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _metadata(account, namespace, labels),
            # The pod opts in itself; nothing else using this account gets a token by accident.
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _metadata(account, namespace, labels),
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": [f"{CompressionJob.plural}/status"],
                    "resourceNames": [name],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _metadata(account, namespace, labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    ]


# ---- the Job ------------------------------------------------------------------------------------------


def build_job(
    *,
    name: str,
    namespace: str,
    generation: int,
    spec: CompressionJobSpec,
    config: OperatorConfig,
    pod_annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job that runs one generation of the CompressionJob `namespace/name`."""
    pool = config.node_pool(spec.node_pool)
    image = config.images.compressor_gpu if pool.has_gpu else config.images.compressor
    labels = merge_labels(compression_labels(name), {GENERATION_LABEL: str(generation)})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": service_account_name(name),
        "automountServiceAccountToken": True,  # the pod patches its CompressionJob's status
        "enableServiceLinks": False,
        "securityContext": hardened_pod_security_context(config),
        "containers": [
            {
                "name": CONTAINER_NAME,
                "image": image.reference,
                "imagePullPolicy": image.pull_policy,
                "command": ["slimserve"],
                "args": ["compress"],
                "env": _env(name=name, namespace=namespace, generation=generation, spec=spec, config=config),
                "resources": compressor_resources(spec, pool, config),
                "volumeMounts": [
                    {"name": "scratch", "mountPath": SCRATCH_DIR},
                    {"name": "cache", "mountPath": CACHE_DIR},
                    *_claim_mounts(spec, config.pvc_mount_root),
                ],
                "securityContext": hardened_container_security_context(),
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "cache", "emptyDir": {}},
            *_claim_volumes(spec),
        ],
        **pool_placement(pool, config),
    }
    template_metadata = {
        "labels": labels,
        "annotations": {**(pod_annotations or {}), "kubectl.kubernetes.io/default-container": CONTAINER_NAME},
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(job_name(name, generation), namespace, labels),
        "spec": {
            "backoffLimit": spec.backoff_limit,
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            # No ttlSecondsAfterFinished: the finished Job and its pod's termination message stay readable.
            "template": {"metadata": template_metadata, "spec": pod_spec},
        },
    }


def _env(
    *, name: str, namespace: str, generation: int, spec: CompressionJobSpec, config: OperatorConfig
) -> list[dict[str, Any]]:
    pod_env = CompressorEnv(
        job_spec=job_spec_text(spec.to_json()),
        status_target=status_target(namespace, name),
        job_generation=generation,
        pvc_root=config.pvc_mount_root,
        cache=CACHE_DIR,
        home=SCRATCH_DIR,  # the root filesystem is read-only: what writes under $HOME (matplotlib, torch) uses scratch
        log_format=pod_log_format(config),
    )
    env: list[dict[str, Any]] = [*pod_env.to_env(), {"name": "PYTHONUNBUFFERED", "value": "1"}]
    secret = spec.s3.credentials_secret if spec.s3 else None
    if secret is not None:
        # Named keys, not envFrom: nothing else the Secret holds reaches the pod.
        env.extend(
            {"name": key, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key}}} for key in S3_SECRET_KEYS
        )
    return env


def compressor_resources(spec: CompressionJobSpec, pool: NodePool, config: OperatorConfig) -> dict[str, Any]:
    """The spec's resources; the configuration's request and limit for CPU or memory the spec names neither
    of (Guaranteed with the shipped defaults); the pool's GPUs as a limit."""
    given = spec.resources.to_json() if spec.resources else {}
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


def pvc_claims(spec: CompressionJobSpec) -> dict[str, bool]:
    """Claims named by pvc:// URIs -> mounted read-only? Only the output's claim is writable."""
    claims: dict[str, bool] = {}
    for field, uri in _storage_uris(spec):
        claim = pvc_claim(uri)
        if claim is None:
            continue
        writable = field == "spec.output.uri"
        claims[claim] = claims.get(claim, True) and not writable
    return dict(sorted(claims.items()))


def _claim_volumes(spec: CompressionJobSpec) -> list[dict[str, Any]]:
    # Volumes are numbered, not named after claims: claim names may hold dots and run to 253 characters.
    return [
        {"name": f"pvc-{index}", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}
        for index, (claim, read_only) in enumerate(pvc_claims(spec).items())
    ]


def _claim_mounts(spec: CompressionJobSpec, root: str) -> list[dict[str, Any]]:
    return [
        {"name": f"pvc-{index}", "mountPath": f"{root.rstrip('/')}/{claim}", "readOnly": read_only}
        for index, (claim, read_only) in enumerate(pvc_claims(spec).items())
    ]

