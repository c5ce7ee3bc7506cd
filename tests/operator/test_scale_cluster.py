"""`kubectl scale` on a ModelService, and scale from zero through the KEDA HTTP add-on, on the real API server
with the operator as a process (kwok nodes). The add-on's and KEDA's real CRDs are installed for a block; their
controllers are not run (tests/autoscaling runs them on the real node)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimserve.api.model_service import REPLICAS_OF_AUTOSCALER
from slimserve.controller.builders.http_scaled_object import DEFAULT_SCALE_DOWN_DELAY_SECONDS
from slimserve.controller.config import OperatorConfig
from tests.cluster.helpers import apply, crd_installed, events_of, exists, get, wait_for, wait_for_event
from tests.operator.test_model_service_cluster import (
    KEDA_CRD,
    deployment_of,
    field_manager_owns_replicas,
    model_service,
    status_of,
    wait_condition,
    wait_ready,
)

pytestmark = pytest.mark.cluster

HTTP_ADD_ON_CRD = Path(__file__).parent / "data" / "keda-http-httpscaledobjects-crd.yaml"
HTTP_SCALED_OBJECTS = "httpscaledobjects.http.keda.sh"
SCALED_OBJECTS = "scaledobjects.keda.sh"


def scale(cp, namespace: str, name: str, replicas: int, check: bool = True):
    return cp.kubectl("scale", "-n", namespace, f"msvc/{name}", f"--replicas={replicas}", check=check)


def patch_autoscaling(cp, namespace: str, name: str, **fields) -> None:
    cp.kubectl("patch", "-n", namespace, "msvc", name, "--type=merge", "-p", json.dumps({"spec": {"autoscaling": fields}}))


def controller_kind(cp, namespace: str, name: str) -> str | None:
    """Kind of the controller of the ScaledObject `name`; None while there is none (it may go between two reads)."""
    found = cp.kubectl("get", "-n", namespace, SCALED_OBJECTS, name, "-o", "json", check=False)
    owners = json.loads(found.stdout)["metadata"].get("ownerReferences", []) if found.returncode == 0 else []
    return next((ref["kind"] for ref in owners if ref.get("controller")), None)


def add_ons_scaled_object(http_scaled_object: dict) -> dict:
    """The ScaledObject the add-on's operator makes for an HTTPScaledObject (its controller is not run here)."""
    meta = http_scaled_object["metadata"]
    owner = {"apiVersion": "http.keda.sh/v1alpha1", "kind": "HTTPScaledObject", "name": meta["name"],
             "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": meta["name"], "labels": meta["labels"], "ownerReferences": [owner]},
            "spec": {"scaleTargetRef": {"name": meta["name"]}, "minReplicaCount": 0,
                     "triggers": [{"type": "external-push", "metadata": {"scalerAddress": "keda-add-ons-http-external-scaler.keda:9090"}}]}}


def test_kubectl_scale_sets_replicas_and_is_refused_while_autoscaling(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, model_service("scalable", replicas=1))
    wait_ready(cp, namespace, "scalable")
    selector = wait_for("status.selector", lambda: status_of(cp, namespace, "scalable").get("selector"))

    scale(cp, namespace, "scalable", 3)
    wait_for("three replicas", lambda: deployment_of(cp, namespace, "scalable")["spec"]["replicas"] == 3)
    wait_ready(cp, namespace, "scalable")
    scaled = get(cp, namespace, "msvc", "scalable", "--subresource=scale")
    assert scaled["spec"]["replicas"] == 3
    assert scaled["status"] == {"replicas": 3, "selector": selector}
    pods = get(cp, namespace, "pods", "-l", selector)["items"]
    assert len(pods) == 3  # the selector the scale subresource hands to an HPA selects the server pods

    patch_autoscaling(cp, namespace, "scalable", metric="cpu", minReplicas=2, maxReplicas=4)
    refused = scale(cp, namespace, "scalable", 5, check=False)
    assert refused.returncode != 0 and REPLICAS_OF_AUTOSCALER in refused.stderr, refused.stderr
    # A patch of spec.replicas is the same write, refused the same way.
    patched = cp.kubectl("patch", "-n", namespace, "msvc", "scalable", "--type=merge",
                         "-p", json.dumps({"spec": {"replicas": 5}}), check=False)
    assert patched.returncode != 0 and REPLICAS_OF_AUTOSCALER in patched.stderr, patched.stderr
    assert get(cp, namespace, "msvc", "scalable")["spec"]["replicas"] == 3

    # Back to fixed replicas, and a new count, in one write.
    cp.kubectl("patch", "-n", namespace, "msvc", "scalable", "--type=json", "-p", json.dumps(
        [{"op": "remove", "path": "/spec/autoscaling"}, {"op": "replace", "path": "/spec/replicas", "value": 2}]))
    wait_for("two replicas", lambda: deployment_of(cp, namespace, "scalable")["spec"]["replicas"] == 2)
    scale(cp, namespace, "scalable", 1)
    wait_for("one replica", lambda: deployment_of(cp, namespace, "scalable")["spec"]["replicas"] == 1)


def test_scale_from_zero_needs_the_http_add_on_and_follows_its_api(control_plane, operator, namespace):
    cp = control_plane
    autoscaling = {"metric": "concurrency", "minReplicas": 0, "maxReplicas": 5, "target": 8}
    with crd_installed(cp, KEDA_CRD):
        apply(cp, namespace, model_service("sleepy", autoscaling=autoscaling))
        # Without the add-on: refused, said so, and served from one replica (KEDA never scales it to zero).
        refused = wait_condition(cp, namespace, "sleepy", "Ready", "False", "ScaleToZeroUnavailable")
        assert "spec.autoscaling.minReplicas" in refused["message"] and "HTTP add-on" in refused["message"]
        wait_condition(cp, namespace, "sleepy", "AutoscalingReady", "False", "ScaleToZeroUnavailable")
        wait_for_event(cp, namespace, "sleepy", reason="ScaleToZeroUnavailable", message="minReplicas",
                       kind="ModelService")
        scaled = wait_for("the ScaledObject", lambda: exists(cp, namespace, SCALED_OBJECTS, "sleepy")
                          and get(cp, namespace, SCALED_OBJECTS, "sleepy"))
        assert scaled["spec"]["minReplicaCount"] == 1
        assert status_of(cp, namespace, "sleepy").get("hostHeader") is None

        with crd_installed(cp, HTTP_ADD_ON_CRD):
            # The add-on installed later: the next round of the operator's KEDA loop routes the service through it.
            wait_condition(cp, namespace, "sleepy", "AutoscalingReady", "True", "HTTPScaledObject")
            routed = get(cp, namespace, HTTP_SCALED_OBJECTS, "sleepy")
            host = f"sleepy.{namespace}.svc.cluster.local"
            assert routed["spec"]["hosts"] == [host]
            assert routed["spec"]["scaleTargetRef"] == {
                "apiVersion": "apps/v1", "kind": "Deployment", "name": "sleepy", "service": "sleepy", "port": 8080}
            assert routed["spec"]["replicas"] == {"min": 0, "max": 5}
            assert routed["spec"]["scalingMetric"] == {"concurrency": {"targetValue": 8}}
            assert routed["spec"]["scaledownPeriod"] == DEFAULT_SCALE_DOWN_DELAY_SECONDS
            (owner,) = routed["metadata"]["ownerReferences"]
            assert (owner["kind"], owner["name"], owner["controller"]) == ("ModelService", "sleepy", True)
            wait_for("the Prometheus ScaledObject deleted", lambda: not exists(cp, namespace, SCALED_OBJECTS, "sleepy"))
            deployment = deployment_of(cp, namespace, "sleepy")
            assert deployment["spec"]["replicas"] == 1 and not field_manager_owns_replicas(deployment)
            wait_ready(cp, namespace, "sleepy")
            status = status_of(cp, namespace, "sleepy")
            assert status["url"] == OperatorConfig().http_interceptor_address
            assert status["hostHeader"] == host
            assert status["grpcAddress"] == f"{host}:9000"

            # The add-on's operator makes a ScaledObject named after the HTTPScaledObject, which it controls. Raising
            # minReplicas to 1 deletes the HTTPScaledObject, and the service's own ScaledObject waits for the garbage
            # collector to remove the add-on's instead of calling it a conflict.
            apply(cp, namespace, add_ons_scaled_object(routed))
            patch_autoscaling(cp, namespace, "sleepy", minReplicas=1)
            wait_condition(cp, namespace, "sleepy", "AutoscalingReady", "True", "ScaledObject")
            wait_for("the service's own ScaledObject", lambda: controller_kind(cp, namespace, "sleepy") == "ModelService")
            wait_ready(cp, namespace, "sleepy")
            assert not exists(cp, namespace, HTTP_SCALED_OBJECTS, "sleepy")
            assert "ChildConflict" not in {reason for _, reason, _ in events_of(cp, namespace, "sleepy", "ModelService")}
            patch_autoscaling(cp, namespace, "sleepy", minReplicas=0)
            wait_condition(cp, namespace, "sleepy", "AutoscalingReady", "True", "HTTPScaledObject")

            # Deleted by hand: a round of the operator's KEDA loop lists it missing and restores it.
            wait_for("the HTTPScaledObject", lambda: exists(cp, namespace, HTTP_SCALED_OBJECTS, "sleepy"))
            cp.kubectl("delete", "-n", namespace, HTTP_SCALED_OBJECTS, "sleepy")
            wait_for("the HTTPScaledObject restored", lambda: exists(cp, namespace, HTTP_SCALED_OBJECTS, "sleepy"))

        # The add-on uninstalled: refused again, and KEDA's ScaledObject (from one replica) back.
        wait_condition(cp, namespace, "sleepy", "Ready", "False", "ScaleToZeroUnavailable")
        wait_for("the ScaledObject back", lambda: exists(cp, namespace, SCALED_OBJECTS, "sleepy"))
        assert "hostHeader" not in status_of(cp, namespace, "sleepy")

        # Moved to the cpu metric: an HPA, and the ScaledObject of the earlier metric deleted.
        patch_autoscaling(cp, namespace, "sleepy", metric="cpu", minReplicas=1)
        wait_condition(cp, namespace, "sleepy", "AutoscalingReady", "True", "HorizontalPodAutoscaler")
        wait_for("the ScaledObject deleted", lambda: not exists(cp, namespace, SCALED_OBJECTS, "sleepy"))
        assert exists(cp, namespace, "hpa", "sleepy")
