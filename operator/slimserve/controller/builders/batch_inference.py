"""Manifests of a BatchInference: the Indexed Job whose pods run `slimserve batch`, and the pods' API access.

One Job per generation (`<name>-batch-g<generation>`), one index per shard: Kubernetes retries each index on
its own (`backoffLimitPerIndex`) and lets `maxFailedShards` of them fail while the others go on. A pod that a
node loss or a preemption ended (condition DisruptionTarget) is retried without counting against its index:
its shard resumes from the parts already written.

The pod gets the spec with the model resolved (a CompressionJob's artifact URI and digest pinned), so every
index of a generation scores with the same model even if the CompressionJob runs again meanwhile.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from slimserve.api import BatchInference, BatchInferenceSpec
from slimserve.api.field_errors import field_errors
from slimserve.api.uri import InvalidUri, parse_uri
from slimserve.api.workload import BatchEnv, job_spec_text
from slimserve.controller.builders import bounded_name, hub_env, pod_log_format, pool_device
from slimserve.controller.builders.compression_job import GENERATION_LABEL, InvalidSpec, status_target
from slimserve.controller.builders.job_pod import (
    CACHE_DIR,
    PYTHON_UNBUFFERED,
    SCRATCH_DIR,
    job_pod_resources,
    job_pod_spec,
    metadata,
    pvc_claims,
    s3_credentials_env,
    status_access,
)
from slimserve.controller.config import OperatorConfig
from slimserve.controller.labels import merge_labels, standard_labels

COMPONENT = "batch-inference"
CONTAINER_NAME = "batch"


def parse_batch_inference_spec(raw: dict[str, Any]) -> BatchInferenceSpec:
    """The spec as the model, or InvalidSpec naming each bad field (the CRD catches most of these first)."""
    try:
        return BatchInferenceSpec.from_json(raw)
    except ValidationError as exc:
        raise InvalidSpec("; ".join(field_errors(exc, root=("spec",)))) from None


def check_runnable(spec: BatchInferenceSpec, config: OperatorConfig) -> None:
    """Raise InvalidSpec listing every semantic problem the CRD's schema cannot see."""
    problems: list[str] = []
    if spec.node_pool not in config.node_pools:
        known = ", ".join(sorted(config.node_pools)) or "none"
        problems.append(f"spec.nodePool: unknown node pool {spec.node_pool!r} (known: {known})")
    for field, uri in _storage_uris(spec):
        try:
            parse_uri(uri)  # the rules the pod's storage applies
        except InvalidUri as exc:
            problems.append(f"{field}: {exc}")
    if spec.output.uri.startswith("file://"):
        problems.append("spec.output.uri: file:// is inside each pod and lost when it ends; use pvc:// or s3://")
    if problems:
        raise InvalidSpec("; ".join(problems))


def _storage_uris(spec: BatchInferenceSpec) -> list[tuple[str, str]]:
    uris = [("spec.input.uri", spec.input.uri), ("spec.output.uri", spec.output.uri)]
    if spec.model.uri is not None:
        uris.insert(0, ("spec.model.uri", spec.model.uri))
    return uris


# ---- names and labels ---------------------------------------------------------------------------------


def job_name(name: str, generation: int) -> str:
    # Not `-g<n>` alone: a CompressionJob of the same name has that Job.
    return bounded_name(name, f"-batch-g{generation}")


def service_account_name(name: str) -> str:
    return bounded_name(name, "-batch")


def batch_labels(name: str) -> dict[str, str]:
    return standard_labels(instance=bounded_name(name), component=COMPONENT)


# ---- the pods' access to their own status -------------------------------------------------------------


def build_access(*, name: str, namespace: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding that let the pods read and patch their own BatchInference's status."""
    return status_access(
        account=service_account_name(name),
        namespace=namespace,
        labels=batch_labels(name),
        plural=BatchInference.plural,
        resource_name=name,
    )


# ---- the Job ------------------------------------------------------------------------------------------


def pinned_spec(spec: BatchInferenceSpec, model_uri: str) -> dict[str, Any]:
    """The spec as the pods run it: the model resolved to its artifact URI, the shard count settled."""
    return {**spec.to_json(), "model": {"uri": model_uri}, "shards": spec.shard_count}


def build_job(
    *,
    name: str,
    namespace: str,
    generation: int,
    spec: BatchInferenceSpec,
    config: OperatorConfig,
    model_uri: str,
    model_digest: str | None = None,
    pod_annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The Indexed batch/v1 Job that scores one generation of the BatchInference `namespace/name`."""
    pool = config.node_pool(spec.node_pool)
    image = config.images.compressor_gpu if pool.has_gpu else config.images.compressor
    labels = merge_labels(batch_labels(name), {GENERATION_LABEL: str(generation)})
    pod_env = BatchEnv(
        batch_spec=job_spec_text(pinned_spec(spec, model_uri)),
        status_target=status_target(namespace, name),
        job_generation=generation,
        shards=spec.shard_count,
        artifact_digest=model_digest,
        pvc_root=config.pvc_mount_root,
        cache=CACHE_DIR,
        home=SCRATCH_DIR,
        log_format=pod_log_format(config),
        device=pool_device(pool),
    )
    claim_uris = [*_storage_uris(spec), ("spec.model.uri", model_uri)]
    pod_spec = job_pod_spec(
        config=config,
        pool=pool,
        service_account=service_account_name(name),
        container_name=CONTAINER_NAME,
        image=image,
        args=["batch"],
        env=[*pod_env.to_env(), PYTHON_UNBUFFERED, *s3_credentials_env(spec.s3), *hub_env(config)],
        resources=job_pod_resources(spec.resources, pool, config),
        claims=pvc_claims(claim_uris, writable_field="spec.output.uri"),
    )
    template_metadata = {
        "labels": labels,
        "annotations": {**(pod_annotations or {}), "kubectl.kubernetes.io/default-container": CONTAINER_NAME},
    }
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": spec.shard_count,
        "parallelism": min(spec.parallelism, spec.shard_count),
        "backoffLimitPerIndex": spec.backoff_limit_per_index,
        "maxFailedIndexes": spec.max_failed_shards,
        "podFailurePolicy": {
            "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
        },
        # No ttlSecondsAfterFinished: the finished Job and its pods' termination messages stay readable.
        "template": {"metadata": template_metadata, "spec": pod_spec},
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(job_name(name, generation), namespace, labels),
        "spec": job_spec,
    }
