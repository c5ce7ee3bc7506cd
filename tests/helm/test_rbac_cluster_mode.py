"""Least privilege, proven in cluster mode: the operator, with a token of the chart's ServiceAccount and so only
the ClusterRole's rights, drives a CompressionJob and a ModelService to their children and status, its log
shows no refused call, and everything outside its rules is refused (403)."""

from __future__ import annotations

import base64
import re
import urllib.request
from pathlib import Path

import pytest

from tests.gitops import kstatus
from tests.gitops.argocd import SCRIPTS, run_health_check
from tests.helm.rbac import (
    KOPF_FALLBACK, assert_compression_job_runs, assert_forbidden, assert_model_service_ready, can_i, compression_job,
    model_service, release_fixture,
)
from tests.cluster.helpers import SOLO_NAMESPACE_PREFIX, apply, condition, crd_installed, exists, get, wait_for
from tests.operator.test_model_service_canary_cluster import httproute_crd_path

KEDA_CRD = Path(__file__).parents[1] / "operator" / "data" / "keda-scaledobjects-crd.yaml"
HTTP_ADD_ON_CRD = KEDA_CRD.with_name("keda-http-httpscaledobjects-crd.yaml")

pytestmark = pytest.mark.cluster


@pytest.fixture
def namespace(control_plane, request):
    """A solo namespace: only the operator running with the chart's rights acts in it."""
    name = control_plane.create_namespace(f"{SOLO_NAMESPACE_PREFIX}{request.node.name.removeprefix('test_')[:30]}")
    yield name
    control_plane.delete_namespace(name, wait=False)


@pytest.fixture(scope="module")
def cluster_mode(control_plane, chart_crds, tmp_path_factory):
    yield from release_fixture(control_plane, tmp_path_factory.mktemp("rbac-cluster"), "rbac", {})


def test_operator_works_with_the_charts_rights(control_plane, cluster_mode, namespace):
    apply(control_plane, namespace, compression_job("digits-slim"), model_service("digits"))
    assert_compression_job_runs(control_plane, cluster_mode, namespace, "digits-slim")
    served = assert_model_service_ready(control_plane, cluster_mode, namespace, "digits")
    running = get(control_plane, namespace, "compressionjob", "digits-slim")

    # The GitOps health checks read the live objects as the fixtures say they would.
    assert run_health_check(SCRIPTS["resource.customizations.health.slimserve.io_ModelService"].read_text(),
                            served)["status"] == "Healthy"
    assert run_health_check(SCRIPTS["resource.customizations.health.slimserve.io_CompressionJob"].read_text(),
                            running)["status"] == "Progressing"
    if kstatus.go_available():
        assert kstatus.compute([served])[0]["status"] == "Current"

    # Nothing the controllers did was refused: the chart's rules cover every call they make. Kopf is refused
    # watching CRDs and, once it stops retrying, goes on with what API discovery listed at start.
    assert cluster_mode.unexpected_refusals() == []
    wait_for("Kopf's fallback from watching CRDs", lambda: KOPF_FALLBACK in cluster_mode.operator.logs())


def test_operator_checks_a_tls_secret_with_the_charts_rights(control_plane, cluster_mode, namespace):
    # The operator reads the Secret's metadata alone, so what the values hold does not matter here.
    data = {key: base64.b64encode(b"not read by the operator").decode() for key in ("tls.crt", "tls.key")}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls-digits-cert"}, "data": data}
    served = model_service("tls-digits")
    served["spec"]["tls"] = {"secretName": "tls-digits-cert"}
    apply(control_plane, namespace, secret, served)
    assert assert_model_service_ready(control_plane, cluster_mode, namespace, "tls-digits")["status"]["url"].startswith(
        "https://")
    assert cluster_mode.unexpected_refusals() == []


def test_operator_is_refused_everything_else(control_plane, cluster_mode, namespace):
    kubeconfig = cluster_mode.kubeconfig
    assert can_i(control_plane, kubeconfig, "create", "jobs.batch", "-n", namespace)  # the identity is live
    assert can_i(control_plane, kubeconfig, "patch", "compressionjobs.slimserve.io", "--subresource=status",
                 "-n", namespace)
    assert can_i(control_plane, kubeconfig, "get", "secrets", "-n", namespace)  # a TLS Secret's metadata, by name
    assert can_i(control_plane, kubeconfig, "get", "persistentvolumeclaims", "-n", namespace)  # a cache claim's
    for request in (("list", "secrets", "-n", namespace), ("watch", "secrets", "-A"), ("delete", "nodes"),
                    ("list", "persistentvolumeclaims", "-n", namespace), ("create", "persistentvolumeclaims", "-n", namespace),
                    # Rights the operator does not use: it only watches and patches its peering object, and
                    # finds CRDs through API discovery.
                    ("get", "clusterkopfpeerings.kopf.dev"),
                    ("list", "customresourcedefinitions.apiextensions.k8s.io"), ("list", "namespaces"),
                    ("create", "clusterrolebindings"), ("update", "configmaps", "-n", namespace),
                    ("delete", "compressionjobs.slimserve.io", "-n", namespace), ("get", "pods", "-n", namespace),
                    ("escalate", "roles.rbac.authorization.k8s.io", "-n", namespace),
                    ("bind", "clusterroles.rbac.authorization.k8s.io")):
        assert not can_i(control_plane, kubeconfig, *request), request
    assert_forbidden(control_plane, kubeconfig, "get", "secrets", "-n", namespace)  # kubectl get, no name: a list
    assert_forbidden(control_plane, kubeconfig, "delete", "node", "kwok-cpu-0", "--dry-run=server")
    assert_forbidden(control_plane, kubeconfig, "create", "clusterrolebinding", "grab", "--clusterrole=cluster-admin",
                     f"--serviceaccount={cluster_mode.namespace}:rbac-slimserve")


def test_operator_metrics_count_handler_runs(control_plane, cluster_mode, namespace):
    """The metrics endpoint the chart's Service points at serves the handler outcomes."""
    apply(control_plane, namespace, model_service("metrics-probe"))
    assert_model_service_ready(control_plane, cluster_mode, namespace, "metrics-probe")
    port = cluster_mode.operator.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'slimserve_operator_info{mode="cluster",version="0.1.0"} 1.0' in text
    assert re.search(r'slimserve_operator_handler_runs_total\{handler="reconcile_model_service",'
                     r'outcome="succeeded"\} [1-9]', text)


def test_operator_keeps_scaled_objects_right_by_listing_them(control_plane, cluster_mode, namespace):
    """KEDA with the chart's rights: found through API discovery, its ScaledObjects listed (not watched), applied
    and restored after a deletion by hand."""
    cp = control_plane
    service = model_service("bursty")
    service["spec"]["autoscaling"] = {"metric": "concurrency", "minReplicas": 1, "maxReplicas": 3}

    def scaled_object() -> bool:
        return exists(cp, namespace, "scaledobjects.keda.sh", "bursty")

    def autoscaling_reason() -> str | None:
        return condition(get(cp, namespace, "modelservice", "bursty").get("status") or {}, "AutoscalingReady").get("reason")

    with crd_installed(cp, KEDA_CRD):  # (kubectl names a kind only while its API is served)
        assert can_i(cp, cluster_mode.kubeconfig, "list", "scaledobjects.keda.sh", "-A")
        assert not can_i(cp, cluster_mode.kubeconfig, "watch", "scaledobjects.keda.sh", "-A")
        apply(cp, namespace, service)
        wait_for("the ScaledObject", lambda: scaled_object() and autoscaling_reason() == "ScaledObject", timeout=90)
        cp.kubectl("delete", "-n", namespace, "scaledobjects.keda.sh", "bursty")
        wait_for("the ScaledObject restored", scaled_object, timeout=60)
        assert autoscaling_reason() == "ScaledObject"
    assert cluster_mode.unexpected_refusals() == []


def test_operator_applies_http_scaled_objects_with_the_charts_rights(control_plane, cluster_mode, namespace):
    """The KEDA HTTP add-on with the chart's rights: found through API discovery, a service scaling from zero gets
    its HTTPScaledObject (read by a list, never watched)."""
    cp = control_plane
    service = model_service("sleepy")
    service["spec"]["autoscaling"] = {"metric": "concurrency", "minReplicas": 0, "maxReplicas": 3}
    with crd_installed(cp, HTTP_ADD_ON_CRD):
        assert can_i(cp, cluster_mode.kubeconfig, "list", "httpscaledobjects.http.keda.sh", "-A")
        assert not can_i(cp, cluster_mode.kubeconfig, "watch", "httpscaledobjects.http.keda.sh", "-A")
        apply(cp, namespace, service)
        wait_for("the HTTPScaledObject", lambda: exists(cp, namespace, "httpscaledobjects.http.keda.sh", "sleepy"),
                 timeout=90)
    assert cluster_mode.unexpected_refusals() == []


def test_operator_runs_and_removes_a_canary_with_the_charts_rights(control_plane, cluster_mode, namespace):
    """A canary beside the autoscaled stable Deployment, with a Gateway: its Deployment, per-version Services and
    HTTPRoute are applied, and deleted when spec.canary goes (the only Deployments and Services it deletes)."""
    cp = control_plane
    service = model_service("ranker")
    service["spec"]["canary"] = {"model": {"uri": "builtin://digits-mlp"}, "trafficPercent": 50,
                                 "gateway": {"name": "public"}}
    with crd_installed(cp, httproute_crd_path()):
        apply(cp, namespace, service)
        wait_for("the canary's children", lambda: exists(cp, namespace, "httproutes.gateway.networking.k8s.io", "ranker")
                 and exists(cp, namespace, "deployment", "ranker-canary") and exists(cp, namespace, "service", "ranker-canary"),
                 timeout=90)
        cp.kubectl("patch", "-n", namespace, "modelservice", "ranker", "--type=merge", "-p", '{"spec": {"canary": null}}')
        wait_for("the canary's children deleted", lambda: not any(
            exists(cp, namespace, kind, name) for kind, name in (("httproutes.gateway.networking.k8s.io", "ranker"),
                                                                ("deployment", "ranker-canary"), ("service", "ranker-canary"),
                                                                ("service", "ranker-stable"))), timeout=90)
    assert cluster_mode.unexpected_refusals() == []
