"""Autoscaling proved by behaviour on the real node: the operator's HorizontalPodAutoscaler reads the server pods'
CPU from metrics-server (tests/autoscaling/components.py, a host process serving metrics.k8s.io), load from the host
through the Service's ClusterIP raises the replicas, and idleness lowers them again.

The test control plane's controller-manager syncs HPAs every 5 s and scales down after 20 s of lower
recommendations (tests/cluster/controlplane.py), so both directions show within a couple of minutes.
"""

from __future__ import annotations

import threading

import pytest

from slimserve.models.digits import digits_data
from tests.autoscaling.components import MetricsServer, missing
from tests.cluster.helpers import apply, get, wait_for
# namespace, operator: a namespace of its own and the real operator with pool `real` and the node's images
from tests.realnode.test_quickstart_on_real_node import namespace, operator  # noqa: F401
from tests.operator.conftest import crds  # noqa: F401  (the CRDs, which that operator needs)
from tests.realnode.node import NODE_NAME, POOL
from tests.serving.serving_helpers import post_json

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CLIENTS = 4  # concurrent host clients: together they keep one replica's CPU far above its target


@pytest.fixture(scope="module")
def metrics_server(control_plane, real_node, tmp_path_factory):
    reason = missing("metrics-server")
    if reason:
        pytest.skip(reason)
    server = MetricsServer.start(control_plane, real_node, tmp_path_factory.mktemp("metrics-server"))
    yield server
    server.stop()


def test_load_raises_replicas_and_idleness_lowers_them(control_plane, real_node, metrics_server, operator,  # noqa: F811
                                                      namespace):  # noqa: F811
    cp = control_plane
    apply(cp, namespace, {
        "apiVersion": "slimserve.io/v1alpha1", "kind": "ModelService", "metadata": {"name": "digits"},
        "spec": {"model": {"uri": "builtin://digits-cnn"}, "nodePool": POOL,
                 # Utilisation is usage over the request: a small request and a core of limit let one busy
                 # replica read far above the target, and an idle one far below it.
                 "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
                 "autoscaling": {"metric": "cpu", "minReplicas": 1, "maxReplicas": 2, "target": 50}},
    })
    cp.kubectl("wait", "-n", namespace, "--for=condition=Ready", "msvc/digits", "--timeout=300s", timeout=310)

    def hpa_status() -> dict:
        return get(cp, namespace, "hpa", "digits").get("status", {})

    def replicas() -> int:
        return get(cp, namespace, "deployment", "digits").get("status", {}).get("readyReplicas", 0)

    # metrics-server's first scrape reaches the HPA: it reads a utilisation for the one idle replica.
    wait_for("the HPA to read the pod's CPU", lambda: hpa_status().get("currentMetrics"), timeout=120)
    assert hpa_status()["currentReplicas"] == 1 and replicas() == 1

    svc = get(cp, namespace, "service", "digits")["spec"]
    address = f"{svc['clusterIP']}:{next(p['port'] for p in svc['ports'] if p['name'] == 'http')}"
    rows = digits_data().x_test[:16]
    infer = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                         "data": rows.ravel().tolist()}]}
    answered, failures, stop = [], [], threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            try:
                status, body = post_json(address, "/v2/models/digits/infer", infer, timeout=30)
                (answered if status == 200 else failures).append((status, body))
            except OSError as error:
                failures.append(error)

    clients = [threading.Thread(target=keep_asking, daemon=True) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    try:
        wait_for("load to raise the replicas to 2", lambda: replicas() == 2, timeout=240, interval=2)
    finally:
        stop.set()
        for client in clients:
            client.join(35)
    assert answered and not failures, f"{len(failures)} of {len(failures) + len(answered)} failed: {failures[:3]}"
    selector = get(cp, namespace, "deployment", "digits")["spec"]["selector"]["matchLabels"]
    pods = get(cp, namespace, "pods", "-l", ",".join(f"{k}={v}" for k, v in selector.items()))["items"]
    assert {pod["spec"]["nodeName"] for pod in pods} == {NODE_NAME}

    # Idle: the HPA's recommendation falls to the floor and, after the stabilization window, the replicas do.
    wait_for("idleness to lower the replicas to 1",
             lambda: get(cp, namespace, "deployment", "digits")["spec"]["replicas"] == 1, timeout=240, interval=2)
    assert hpa_status()["desiredReplicas"] == 1

    # The replicas are the HPA's: the operator, once its status shows the Deployment's last change, has
    # never taken them for a hand edit of its Deployment.
    wait_for("the status to follow the Deployment", lambda: (get(cp, namespace, "msvc", "digits").get("status", {})
                                                             .get("replicas")) == 1, timeout=120, interval=1)
    assert f"Deployment {namespace}/digits was changed by someone else" not in operator.logs()
