"""A ModelService's status, computed from what the operator observed: pure functions, no API calls.

Three conditions: `ModelAvailable` (there is an artifact to serve), `AutoscalingReady` (only with
`spec.autoscaling`) and `Ready`, which summarises the service: model available and the Deployment rolled out
for its current generation with every updated replica available.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slimserve.controller.builders.model_service import (
    ArtifactToServe,
    Owner,
    grpc_address,
    selector_string,
    service_host,
    service_url,
)
from slimserve.controller.conditions import FALSE, TRUE, find_condition, set_condition

READY = "Ready"
MODEL_AVAILABLE = "ModelAvailable"
AUTOSCALING_READY = "AutoscalingReady"
# kstatus (Flux, kpt) reads Ready=False as "in progress" forever; Stalled=True tells it waiting will not help.
STALLED = "Stalled"
# A child someone else holds, or an apply the API server rejects as such, needs someone to act (retries go on).
CHILD_CONFLICT = "ChildConflict"
APPLY_REJECTED = "ApplyRejected"  # 4xx: the manifest or the request is refused (invalid, forbidden, ...)
APPLY_FAILED = "ApplyFailed"  # 5xx, throttling, no answer: may pass by itself
# spec.tls names a Secret that does not exist, or lacks a key it needs: the pods are not rolled until it does
# (not Stalled: cert-manager, say, may be about to write it).
TLS_SECRET_MISSING = "TLSSecretMissing"
TLS_SECRET_INVALID = "TLSSecretInvalid"
# The same for spec.auth.apiKeysSecret: missing, or without a key entry (a server would refuse to start).
API_KEYS_SECRET_MISSING = "APIKeysSecretMissing"
API_KEYS_SECRET_INVALID = "APIKeysSecretInvalid"
# The download cache's claim (spec.modelCache's, or the node pool's) does not exist: the pods would stay Pending.
MODEL_CACHE_CLAIM_MISSING = "ModelCacheClaimMissing"
STALLED_REASONS = frozenset(
    {"InvalidSpec", "UnknownNodePool", "CompressionFailed", "ProgressDeadlineExceeded", CHILD_CONFLICT, APPLY_REJECTED}
)


@dataclass(frozen=True)
class Verdict:
    """One condition's status, reason and message."""

    status: str
    reason: str
    message: str = ""

    @property
    def true(self) -> bool:
        return self.status == TRUE


@dataclass(frozen=True)
class ModelResolution:
    """What the pods should serve now (None while waiting), and the ModelAvailable condition saying why."""

    model: ArtifactToServe | None
    verdict: Verdict


def resolve_model_uri(uri: str) -> ModelResolution:
    return ModelResolution(ArtifactToServe(uri), Verdict(TRUE, "UriSpecified", f"serving {uri}"))


def resolve_compression_job(
    job_name: str, job: dict[str, Any] | None, *, allow_outside_budget: bool = False
) -> ModelResolution:
    """The artifact of a CompressionJob once it has succeeded; otherwise why there is none yet.

    A missing or failed job is not permanent: the job may be created, fixed or re-run, and its watch
    reconciles the service again. An artifact that missed its accuracy budget (`metrics.withinBudget`
    false) is not served unless the service allows it: its server would refuse to load it.
    """
    if job is None:
        return ModelResolution(
            None,
            Verdict(FALSE, "CompressionJobNotFound", f"CompressionJob {job_name!r} does not exist in this namespace"),
        )
    status = job.get("status") or {}
    succeeded = find_condition(status.get("conditions"), "Succeeded") or {}
    artifact = status.get("artifact") or {}
    if succeeded.get("status") == TRUE and artifact.get("uri") and artifact.get("digest"):
        model = ArtifactToServe(artifact["uri"], artifact["digest"])
        if (status.get("metrics") or {}).get("withinBudget") is False and not allow_outside_budget:
            return ModelResolution(None, Verdict(
                FALSE, "OutsideBudget",
                f"CompressionJob {job_name!r} missed its accuracy budget and kept its best candidate "
                f"(withinBudget: false); set spec.model.allowOutsideBudget to serve {model.uri}",
            ))
        return ModelResolution(
            model,
            Verdict(TRUE, "CompressionSucceeded", f"serving {model.uri} ({model.digest}) from CompressionJob {job_name!r}"),
        )
    if succeeded.get("status") == FALSE or status.get("phase") in ("Failed", "Invalid"):
        detail = succeeded.get("message") or status.get("phase") or "failed"
        return ModelResolution(
            None, Verdict(FALSE, "CompressionFailed", f"CompressionJob {job_name!r} failed: {detail}")
        )
    phase = status.get("phase") or "Pending"
    return ModelResolution(
        None,
        Verdict(FALSE, "WaitingForCompression", f"waiting for CompressionJob {job_name!r} to succeed (phase {phase})"),
    )


@dataclass(frozen=True)
class Rollout:
    """How far the Deployment is, in the terms of `kubectl rollout status`."""

    verdict: Verdict
    replicas: int
    ready_replicas: int


def evaluate_rollout(deployment: dict[str, Any] | None) -> Rollout:
    if deployment is None:
        return Rollout(Verdict(FALSE, "DeploymentMissing", "the server Deployment does not exist yet"), 0, 0)
    generation = deployment.get("metadata", {}).get("generation", 0)
    desired = deployment.get("spec", {}).get("replicas", 1)
    status = deployment.get("status") or {}
    replicas = status.get("replicas", 0)
    ready = status.get("readyReplicas", 0)
    updated = status.get("updatedReplicas", 0)
    available = status.get("availableReplicas", 0)

    def progressing(message: str) -> Rollout:
        return Rollout(Verdict(FALSE, "RollingOut", message), replicas, ready)

    if status.get("observedGeneration", 0) < generation:
        return progressing(f"waiting for the Deployment controller to observe generation {generation}")
    progress = find_condition(status.get("conditions"), "Progressing") or {}
    if progress.get("reason") == "ProgressDeadlineExceeded":
        return Rollout(
            Verdict(FALSE, "ProgressDeadlineExceeded", progress.get("message") or "the rollout stopped progressing"),
            replicas,
            ready,
        )
    if updated < desired:
        return progressing(f"{updated} of {desired} replicas updated")
    if replicas > updated:
        return progressing(f"{replicas - updated} old replicas pending termination")
    if available < updated:
        return progressing(f"{available} of {updated} updated replicas available")
    if desired == 0:
        return Rollout(Verdict(TRUE, "ScaledToZero", "no replicas; the autoscaler starts one on demand"), 0, 0)
    return Rollout(Verdict(TRUE, "Available", f"{available} of {desired} replicas available"), replicas, ready)


HTTP_SCALED_OBJECT = "HTTPScaledObject"
# minReplicas 0 without the KEDA HTTP add-on: refused (Ready False), served from one replica meanwhile.
SCALE_TO_ZERO_UNAVAILABLE = "ScaleToZeroUnavailable"


def autoscaling_verdict(
    metric: str | None, *, keda_installed: bool, scale_to_zero: bool = False, http_add_on_installed: bool = False
) -> Verdict | None:
    """AutoscalingReady for the spec's metric; None without autoscaling (the condition is removed)."""
    if metric is None:
        return None
    if metric == "cpu":
        return Verdict(TRUE, "HorizontalPodAutoscaler", "a HorizontalPodAutoscaler scales on CPU utilisation")
    if scale_to_zero and http_add_on_installed:
        return Verdict(TRUE, HTTP_SCALED_OBJECT, "the KEDA HTTP add-on scales from zero on in-flight requests; "
                       "clients call status.url with the Host header status.hostHeader")
    if scale_to_zero:
        instead = "a KEDA ScaledObject from 1 replica" if keda_installed else "1 fixed replica (KEDA is not installed)"
        return Verdict(
            FALSE, SCALE_TO_ZERO_UNAVAILABLE,
            "spec.autoscaling.minReplicas 0 needs the KEDA HTTP add-on (API http.keda.sh/v1alpha1 HTTPScaledObject), "
            "which is not installed: at zero replicas nothing would wake the service. Serving with "
            f"{instead} meanwhile; install the add-on, or set minReplicas to 1 or more",
        )
    if keda_installed:
        return Verdict(TRUE, "ScaledObject", "a KEDA ScaledObject scales on in-flight requests")
    return Verdict(
        FALSE,
        "KedaNotInstalled",
        "metric concurrency needs KEDA, but the API keda.sh/v1alpha1 ScaledObject is not installed; running "
        "max(minReplicas, 1) fixed replicas. Install KEDA, or use metric: cpu",
    )


@dataclass(frozen=True)
class StatusInputs:
    """Everything the status depends on except the Deployment's progress (which changes on its own)."""

    generation: int
    resolution: ModelResolution
    autoscaling: Verdict | None
    url: str | None
    grpc_address: str | None
    selector: str | None = None
    host_header: str | None = None  # when `url` is the HTTP add-on's interceptor


def inputs_for(
    owner: Owner,
    generation: int,
    resolution: ModelResolution,
    autoscaling: Verdict | None,
    cluster_domain: str,
    tls: bool = False,
    interceptor_url: str | None = None,
) -> StatusInputs:
    """`interceptor_url`: the HTTP add-on's proxy, which REST clients call (with the Host header) when the
    service scales from zero through it."""
    served = resolution.model is not None
    routed = served and autoscaling is not None and autoscaling.reason == HTTP_SCALED_OBJECT and interceptor_url
    return StatusInputs(
        generation=generation,
        resolution=resolution,
        autoscaling=autoscaling,
        url=(interceptor_url if routed else service_url(owner, cluster_domain, tls)) if served else None,
        grpc_address=grpc_address(owner, cluster_domain) if served else None,
        selector=selector_string(owner),
        host_header=service_host(owner, cluster_domain) if routed else None,
    )


def _with(conditions: list[dict[str, Any]], type_: str, verdict: Verdict, generation: int) -> list[dict[str, Any]]:
    return set_condition(conditions, type_, verdict.status, verdict.reason, verdict.message, generation=generation)


@dataclass(frozen=True)
class Refusal:
    """A child the pass could not apply: `reason` one of CHILD_CONFLICT, APPLY_REJECTED, APPLY_FAILED, or one of
    the mounts' (the TLS and API-key Secrets, the download cache's claim: nothing was applied)."""

    reason: str
    message: str


def refusal_verdict(refusals: list[Refusal]) -> Verdict:
    """Ready=False for the pass's refused applies: the reason needing the most attention, every message."""
    order = (CHILD_CONFLICT, APPLY_REJECTED, TLS_SECRET_MISSING, TLS_SECRET_INVALID, API_KEYS_SECRET_MISSING,
             API_KEYS_SECRET_INVALID, MODEL_CACHE_CLAIM_MISSING, APPLY_FAILED)
    reason = min((r.reason for r in refusals), key=order.index)
    return Verdict(FALSE, reason, "; ".join(r.message for r in refusals))


def ready_verdict(
    resolution: ModelResolution, rollout: Rollout | None, refused: Verdict | None = None, autoscaling: Verdict | None = None
) -> Verdict:
    if not resolution.verdict.true:
        return resolution.verdict
    if refused is not None:
        return refused
    if autoscaling is not None and autoscaling.reason == SCALE_TO_ZERO_UNAVAILABLE:
        return autoscaling  # the spec is refused, though a replica serves meanwhile
    if rollout is None:
        return Verdict(FALSE, "DeploymentMissing", "the server Deployment does not exist yet")
    return rollout.verdict


def compose_status(
    previous: dict[str, Any] | None, inputs: StatusInputs, rollout: Rollout | None, refused: Verdict | None = None
) -> dict[str, Any]:
    """The whole status; conditions keep their lastTransitionTime while their status holds.

    While no model is available, or the children could not be applied (`refused`: Ready says why), the
    service fields keep their previous values: the pods of an earlier artifact (if any) go on serving it
    until a new one is ready, and a Service someone else holds is never advertised.
    """
    previous = previous or {}
    generation = inputs.generation
    conditions = _with(previous.get("conditions") or [], MODEL_AVAILABLE, inputs.resolution.verdict, generation)
    if inputs.autoscaling is None:
        conditions = [c for c in conditions if c.get("type") != AUTOSCALING_READY]
    else:
        conditions = _with(conditions, AUTOSCALING_READY, inputs.autoscaling, generation)
    conditions = _with(conditions, READY, ready_verdict(inputs.resolution, rollout, refused, inputs.autoscaling), generation)
    conditions = _with_stalled(conditions, generation)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": sorted(conditions, key=lambda c: c["type"]),
        "selector": inputs.selector,
    }
    model = inputs.resolution.model
    if model is None or refused is not None:
        for key in ("url", "hostHeader", "grpcAddress", "modelUri", "modelDigest", "replicas", "readyReplicas"):
            status[key] = previous.get(key)
    else:
        status.update(
            url=inputs.url,
            hostHeader=inputs.host_header,
            grpcAddress=inputs.grpc_address,
            modelUri=model.uri,
            modelDigest=model.digest,
            replicas=rollout.replicas if rollout else 0,
            readyReplicas=rollout.ready_replicas if rollout else 0,
        )
    return status


def invalid_status(previous: dict[str, Any] | None, generation: int, reason: str, message: str) -> dict[str, Any]:
    """Status of a spec the operator cannot act on (the CRD's schema could not catch it)."""
    previous = previous or {}
    conditions = set_condition(previous.get("conditions"), READY, FALSE, reason, message, generation=generation)
    conditions = _with_stalled(conditions, generation)
    return {**previous, "observedGeneration": generation, "conditions": sorted(conditions, key=lambda c: c["type"])}


def _with_stalled(conditions: list[dict[str, Any]], generation: int) -> list[dict[str, Any]]:
    """Stalled follows Ready: True with Ready's reason when Ready is False for a reason waiting will not fix."""
    ready = find_condition(conditions, READY) or {}
    stalled = ready.get("status") == FALSE and ready.get("reason") in STALLED_REASONS
    if stalled:
        return set_condition(conditions, STALLED, TRUE, ready["reason"], ready.get("message", ""), generation=generation)
    return set_condition(conditions, STALLED, FALSE, "NotStalled", "", generation=generation)


def status_differs(current: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """Whether writing `desired` changes anything (None-valued keys mean absent)."""
    current = current or {}
    return any(current.get(key) != value for key, value in desired.items())
