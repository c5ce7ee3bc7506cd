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
from slimserve.api.uri import InvalidUri, parse_uri
from slimserve.api.workload import CompressorEnv, job_spec_text
from slimserve.controller.builders import bounded_name, hub_env, pod_log_format, pool_device
from slimserve.controller.builders.job_pod import (
    CACHE_DIR,
    PYTHON_UNBUFFERED,
    SCRATCH_DIR,
    job_pod_resources,
    job_pod_spec,
    metadata,
    s3_credentials_env,
    status_access,
)
from slimserve.controller.builders.job_pod import pvc_claims as claims_of
from slimserve.controller.config import OperatorConfig
from slimserve.controller.labels import merge_labels, standard_labels

COMPONENT = "compressor"
CONTAINER_NAME = "compressor"
GENERATION_LABEL = f"{GROUP}/generation"
# A JSON object of annotations for the compression pod (sidecar opt-outs, autoscaler hints...).
POD_ANNOTATIONS_ANNOTATION = f"{GROUP}/pod-annotations"


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


# ---- the pod's access to its own status ---------------------------------------------------------------


def build_access(*, name: str, namespace: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding that let the pod read and patch its own CompressionJob's status."""
    return status_access(
        account=service_account_name(name),
        namespace=namespace,
        labels=compression_labels(name),
        plural=CompressionJob.plural,
        resource_name=name,
    )


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
    pod_spec = job_pod_spec(
        config=config,
        pool=pool,
        service_account=service_account_name(name),
        container_name=CONTAINER_NAME,
        image=image,
        args=["compress"],
        env=_env(name=name, namespace=namespace, generation=generation, spec=spec, config=config, device=pool_device(pool)),
        resources=job_pod_resources(spec.resources, pool, config),
        claims=pvc_claims(spec),
    )
    template_metadata = {
        "labels": labels,
        "annotations": {**(pod_annotations or {}), "kubectl.kubernetes.io/default-container": CONTAINER_NAME},
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(job_name(name, generation), namespace, labels),
        "spec": {
            "backoffLimit": spec.backoff_limit,
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            # A pod ended by an eviction, a preemption or a lost node is replaced without counting against
            # backoffLimit; the new pod resumes after the last step checkpointed beside the output.
            "podFailurePolicy": {
                "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
            },
            # No ttlSecondsAfterFinished: the finished Job and its pod's termination message stay readable.
            "template": {"metadata": template_metadata, "spec": pod_spec},
        },
    }


def _env(
    *, name: str, namespace: str, generation: int, spec: CompressionJobSpec, config: OperatorConfig, device: str
) -> list[dict[str, Any]]:
    pod_env = CompressorEnv(
        job_spec=job_spec_text(spec.to_json()),
        status_target=status_target(namespace, name),
        job_generation=generation,
        pvc_root=config.pvc_mount_root,
        cache=CACHE_DIR,
        home=SCRATCH_DIR,  # the root filesystem is read-only: what writes under $HOME (matplotlib, torch) uses scratch
        log_format=pod_log_format(config),
        device=device,
    )
    return [*pod_env.to_env(), PYTHON_UNBUFFERED, *s3_credentials_env(spec.s3), *hub_env(config, spec.model.hf_token_secret)]


def pvc_claims(spec: CompressionJobSpec) -> dict[str, bool]:
    """Claims named by pvc:// URIs -> mounted read-only? Only the output's claim is writable."""
    return claims_of(_storage_uris(spec), writable_field="spec.output.uri")
