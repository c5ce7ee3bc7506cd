"""The KEDA HTTP add-on's HTTPScaledObject of a ModelService that scales from zero (`minReplicas: 0`).

At zero pods no server exports `slimserve_inflight_requests`, so a Prometheus trigger can never wake the
service. The add-on's interceptor can: requests reach it (its proxy Service) with the service's host in the
Host header, it counts them for its scaler, holds them while KEDA scales the Deployment from zero, and
forwards them to the ModelService's Service once a pod is ready. The add-on's operator makes the KEDA
ScaledObject itself (named after the HTTPScaledObject, with its labels), so the ModelService owns no other.

Only fields that every supported add-on version (v0.8 to v0.15) declares: an API server prunes a field its CRD
lacks without a word, so a newer field (`timeouts`, `coldStartTimeoutFailoverRef`) would seem set and do nothing.
How long the interceptor holds a request at zero replicas is therefore its own setting (docs/autoscaling.md).

Pure: the object from the facts it routes and scales; `builders.model_service` supplies them.
"""

from __future__ import annotations

from typing import Any

from slimserve.api.model_service import AutoscalingSpec

HTTP_ADD_ON_GROUP, HTTP_ADD_ON_VERSION, HTTP_ADD_ON_PLURAL = "http.keda.sh", "v1alpha1", "httpscaledobjects"
HTTP_SCALED_OBJECT_REF = (f"{HTTP_ADD_ON_GROUP}/{HTTP_ADD_ON_VERSION}", "HTTPScaledObject")
# Seconds without requests before the last replica goes, unless the spec says: KEDA's and the add-on's default.
DEFAULT_SCALE_DOWN_DELAY_SECONDS = 300


def scale_down_delay(autoscaling: AutoscalingSpec) -> int:
    """Seconds of low load before scaling to zero (KEDA's cooldownPeriod, the add-on's scaledownPeriod)."""
    delay = autoscaling.scale_down_delay_seconds
    return DEFAULT_SCALE_DOWN_DELAY_SECONDS if delay is None else delay


def build_http_scaled_object(
    metadata: dict[str, Any],
    target: dict[str, str],
    *,
    service: str,
    port: int,
    host: str,
    autoscaling: AutoscalingSpec,
) -> dict[str, Any]:
    """Requests with Host `host` go to `service`:`port`, and in-flight requests per replica scale `target`
    (apiVersion, kind and name of the Deployment) between autoscaling's bounds."""
    return {
        "apiVersion": HTTP_SCALED_OBJECT_REF[0],
        "kind": HTTP_SCALED_OBJECT_REF[1],
        "metadata": metadata,
        "spec": {
            "hosts": [host],
            "scaleTargetRef": {**target, "service": service, "port": port},
            "replicas": {"min": autoscaling.min_replicas, "max": autoscaling.max_replicas},
            "scaledownPeriod": scale_down_delay(autoscaling),
            "scalingMetric": {"concurrency": {"targetValue": autoscaling.target}},
        },
    }
