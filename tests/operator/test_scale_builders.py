"""Scale from zero: which autoscaler a ModelService gets with and without the KEDA HTTP add-on, the
HTTPScaledObject's shape, and the status that tells clients where to send requests."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from slimserve.controller.builders import model_service as b
from slimserve.controller.config import OperatorConfig
from slimserve.controller.model_service_status import (
    autoscaling_verdict,
    compose_status,
    inputs_for,
    resolve_model_uri,
    Rollout,
    Verdict,
)
from tests.operator.test_builders_model_service import CONFIG, MODEL, OWNER, by_kind, deleted_kinds, spec

TO_ZERO = {"metric": "concurrency", "minReplicas": 0, "maxReplicas": 5, "target": 4}
INTERCEPTOR = "http://keda-add-ons-http-interceptor-proxy.keda.svc:8080"


def children(autoscaling: dict, *, keda: bool, add_on: bool) -> b.Children:
    service_spec = spec(autoscaling=autoscaling)
    return b.desired_children(OWNER, service_spec, MODEL, CONFIG.node_pool("cpu"), CONFIG, keda_installed=keda,
                              http_add_on_installed=add_on)


@pytest.mark.parametrize("keda", [True, False])
def test_scale_to_zero_with_the_add_on_is_an_http_scaled_object_instead_of_a_scaled_object(keda):
    result = children(TO_ZERO, keda=keda, add_on=True)
    kinds = by_kind(result)
    assert "ScaledObject" not in kinds and "replicas" not in kinds["Deployment"]["spec"]
    assert kinds["HTTPScaledObject"] == {
        "apiVersion": "http.keda.sh/v1alpha1",
        "kind": "HTTPScaledObject",
        "metadata": {"name": "digits", "namespace": "team-a", "labels": b.labels_of(OWNER),
                     "ownerReferences": [OWNER.reference()]},
        "spec": {
            "hosts": ["digits.team-a.svc.cluster.local"],
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "digits", "service": "digits",
                               "port": 8080},
            "replicas": {"min": 0, "max": 5},
            "scaledownPeriod": 300,
            "scalingMetric": {"concurrency": {"targetValue": 4}},
        },
    }
    assert ("ScaledObject" in deleted_kinds(result)) == keda  # only while KEDA's API exists


def test_scale_to_zero_without_the_add_on_never_reaches_zero():
    with_keda = by_kind(children(TO_ZERO, keda=True, add_on=False))
    assert with_keda["ScaledObject"]["spec"]["minReplicaCount"] == 1
    assert "HTTPScaledObject" not in with_keda
    assert by_kind(children(TO_ZERO, keda=False, add_on=False))["Deployment"]["spec"]["replicas"] == 1


def test_the_scale_down_delay_reaches_every_autoscaler():
    delay = {"scaleDownDelaySeconds": 45}
    to_zero = by_kind(children({**TO_ZERO, **delay}, keda=True, add_on=True))["HTTPScaledObject"]
    assert to_zero["spec"]["scaledownPeriod"] == 45
    prometheus = by_kind(children({**TO_ZERO, "minReplicas": 1, **delay}, keda=True, add_on=False))["ScaledObject"]
    assert prometheus["spec"]["cooldownPeriod"] == 45
    assert prometheus["spec"]["advanced"] == {
        "horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 45}}}}
    hpa = by_kind(children({"metric": "cpu", "minReplicas": 1, "maxReplicas": 3, **delay}, keda=False, add_on=False))
    assert hpa["HorizontalPodAutoscaler"]["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 45}}
    # Unset: each autoscaler keeps its own default (no behavior, KEDA's 300 s).
    assert "behavior" not in by_kind(children({"metric": "cpu"}, keda=False, add_on=False))["HorizontalPodAutoscaler"]["spec"]
    default = by_kind(children({**TO_ZERO, "minReplicas": 1}, keda=True, add_on=False))["ScaledObject"]["spec"]
    assert default["cooldownPeriod"] == 300 and "advanced" not in default


@pytest.mark.parametrize("seconds", [-1, 3601])
def test_a_scale_down_delay_out_of_range_is_refused(seconds):
    with pytest.raises(ValidationError, match="scaleDownDelaySeconds"):
        spec(autoscaling={**TO_ZERO, "scaleDownDelaySeconds": seconds})


def test_a_floor_above_zero_deletes_the_http_scaled_object_and_uses_prometheus():
    result = children({**TO_ZERO, "minReplicas": 2}, keda=True, add_on=True)
    assert by_kind(result)["ScaledObject"]["spec"]["minReplicaCount"] == 2
    assert "HTTPScaledObject" in deleted_kinds(result)


def test_status_names_the_interceptor_or_refuses_scale_to_zero():
    model = resolve_model_uri("pvc://models/digits-slim")
    available = Rollout(Verdict("True", "Available", "1 of 1 replicas available"), 1, 1)

    def status(verdict: Verdict) -> dict:
        return compose_status({}, inputs_for(OWNER, 1, model, verdict, "cluster.local", interceptor_url=INTERCEPTOR),
                              available)

    routed = status(autoscaling_verdict("concurrency", keda_installed=True, scale_to_zero=True,
                                        http_add_on_installed=True))
    assert (routed["url"], routed["hostHeader"]) == (INTERCEPTOR, "digits.team-a.svc.cluster.local")
    assert routed["grpcAddress"] == "digits.team-a.svc.cluster.local:9000"  # gRPC: the Service, not the interceptor
    assert {c["type"]: c["reason"] for c in routed["conditions"]}["Ready"] == "Available"
    assert routed["selector"] == b.selector_string(OWNER)

    for keda, serving in ((True, "a KEDA ScaledObject from 1 replica"), (False, "1 fixed replica")):
        refused = status(autoscaling_verdict("concurrency", keda_installed=keda, scale_to_zero=True))
        ready = next(c for c in refused["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "ScaleToZeroUnavailable")
        assert "spec.autoscaling.minReplicas 0 needs the KEDA HTTP add-on" in ready["message"]
        assert serving in ready["message"]
        assert refused["url"] == "http://digits.team-a.svc.cluster.local:8080" and refused["hostHeader"] is None
        assert not any(c["type"] == "Stalled" and c["status"] == "True" for c in refused["conditions"])


def test_the_interceptor_address_is_an_origin():
    assert OperatorConfig().http_interceptor_address == INTERCEPTOR
    with pytest.raises(ValidationError, match="http_interceptor_address|httpInterceptorAddress"):
        OperatorConfig.model_validate({"httpInterceptorAddress": "keda-add-ons-http-interceptor-proxy/path"})
