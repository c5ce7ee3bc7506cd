"""KEDA's Prometheus trigger proved by behaviour on the real node: a ModelService with the concurrency metric owns a
ScaledObject whose trigger asks a real Prometheus for `slimserve_inflight_requests`; that Prometheus finds the
server pods through Kubernetes pod discovery against the test API server and scrapes them; KEDA's operator and its
metrics adapter (tests/autoscaling/components.py, the adapter serving external.metrics.k8s.io) feed the value to
the HPA KEDA makes. Requests held in flight from the host raise the replicas from one to two, none failing, and
idleness lowers them to one again after the spec's scale-down delay.

The test control plane's controller-manager syncs HPAs every 5 s (tests/cluster/controlplane.py), and Prometheus
scrapes every second, so both directions show within a couple of minutes.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml
from tritonclient.utils import InferenceServerException

from slimserve.controller.builders.model_service import Owner, inflight_query
from slimserve.models.digits import digits_data
from tests.autoscaling.components import (KEDA_ADAPTER_BINARIES, KEDA_HOST_ADDRESS, keda_with_adapter,
                                          skip_unless_built)
from tests.cluster.helpers import apply, get, wait_for
from tests.operator.conftest import OperatorProcess, crds  # noqa: F401  (crds: the CRDs the operator needs)
from tests.operator.test_model_service_cluster import wait_condition
from tests.prometheus.server import Prometheus, built_binary, pod_discovery
from tests.realnode.canary_traffic import SMALL_POD
from tests.realnode.node import NODE_NAME, POOL
# namespace: one of its own, which the session's admin operator (if a run has one) leaves alone
from tests.realnode.test_quickstart_on_real_node import namespace, real_pool_config  # noqa: F401

from .wake import replicas, server_pods

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SERVICE = "busy"
TARGET = 2  # in-flight requests per replica the ScaledObject aims at
CLIENTS = 6  # host clients, each keeping one request in flight: three replicas' worth, capped at two
# Images per request, sent as binary tensor data: the server's CNN takes far longer over them than a client takes
# to send the next request, so each client's request is in flight for nearly all of its loop.
ROWS = 256
SCALE_DOWN_DELAY_SECONDS = 20
PROMETHEUS_USER = "system:slimserve-test:prometheus"


@pytest.fixture
def keda(control_plane, real_node, namespace):  # noqa: F811
    skip_unless_built(*KEDA_ADAPTER_BINARIES)
    with keda_with_adapter(control_plane, namespace, real_node.workdir / "keda") as keda:
        yield keda


@pytest.fixture
def prometheus(control_plane, keda, namespace, tmp_path):  # noqa: F811
    """Prometheus on the host's end of KEDA's link (where KEDA's operator reaches it), discovering the namespace's
    pods with an identity that may only read them."""
    cp = control_plane
    apply(cp, namespace, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "prometheus"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
    }, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "prometheus"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "prometheus"},
        "subjects": [{"kind": "User", "name": PROMETHEUS_USER}],
    })
    kubeconfig = cp.client_kubeconfig("prometheus", PROMETHEUS_USER)
    work = tmp_path / "prometheus"
    work.mkdir()
    server = Prometheus(built_binary(), work, pod_discovery(kubeconfig, namespace), host=KEDA_HOST_ADDRESS)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
    assert server.process.poll() is not None, "prometheus still running"


@pytest.fixture
def operator(control_plane, crds, namespace, node_images, prometheus, tmp_path):  # noqa: F811
    """The real operator with pool `real`, the node's images, and that Prometheus for its ScaledObjects."""
    proc = OperatorProcess(control_plane, tmp_path / "operator", extra_args=("--namespace", namespace))
    proc.config_path.write_text(yaml.safe_dump({**real_pool_config(node_images),
                                                "prometheusAddress": f"http://{prometheus.address}"}))
    proc.start()
    yield proc
    proc.stop()


def test_requests_in_flight_raise_replicas_and_idleness_lowers_them(control_plane, real_node, keda, prometheus,
                                                                  operator, namespace):  # noqa: F811
    cp = control_plane

    def waiting(what: str, check, timeout: float, interval: float = 1):
        def alive_and(check=check):
            keda.check_running()
            return check()
        try:
            return wait_for(what, alive_and, timeout=timeout, interval=interval)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{scaling_state()}\n{keda.logs()}") from None

    def scaling_state() -> str:
        """What the HPA, the Deployment and its pods say, and the namespace's events."""
        out = [cp.kubectl("get", "-n", namespace, "hpa,deployment,pods", "-o", "wide", check=False).stdout,
               cp.kubectl("get", "-n", namespace, "hpa", "-o", "yaml", check=False).stdout[-3000:],
               cp.kubectl("get", "-n", namespace, "events", "--sort-by=.lastTimestamp", check=False).stdout[-3000:]]
        return "\n".join(out)

    apply(cp, namespace, {
        "apiVersion": "slimserve.io/v1alpha1", "kind": "ModelService", "metadata": {"name": SERVICE},
        "spec": {"model": {"uri": "builtin://digits-cnn"}, "nodePool": POOL, "resources": SMALL_POD,
                 "batching": {"maxBatchSize": ROWS},  # also the most rows one request may carry
                 "autoscaling": {"metric": "concurrency", "minReplicas": 1, "maxReplicas": 2, "target": TARGET,
                                 "scaleDownDelaySeconds": SCALE_DOWN_DELAY_SECONDS}},
    })
    wait_condition(cp, namespace, SERVICE, "AutoscalingReady", "True", "ScaledObject", timeout=120)
    cp.kubectl("wait", "-n", namespace, "--for=condition=Ready", f"msvc/{SERVICE}", "--timeout=300s", timeout=310)
    scaled_object = get(cp, namespace, "scaledobjects.keda.sh", SERVICE)
    (trigger,) = scaled_object["spec"]["triggers"]
    assert trigger["metadata"]["serverAddress"] == f"http://{prometheus.address}"

    # Prometheus found the pod through the API server and scrapes it, labelled as the operator's query selects.
    (pod,) = server_pods(cp, namespace, SERVICE)
    query = inflight_query(Owner(name=SERVICE, namespace=namespace, uid=scaled_object["metadata"]["uid"]))
    assert query == trigger["metadata"]["query"]
    scraped = prometheus.wait_for(f'up{{namespace="{namespace}",pod="{pod["metadata"]["name"]}"}}',
                                  lambda result: bool(result) and result[0]["value"][1] == "1", timeout_s=60)
    assert scraped and scraped[0]["value"][1] == "1", f"the pod is not scraped: {scraped}"

    # KEDA's HPA reads the trigger's value through the adapter (external.metrics.k8s.io) before any load.
    hpa_name = waiting("KEDA's HPA", lambda: get(cp, namespace, "scaledobjects.keda.sh", SERVICE)
                       .get("status", {}).get("hpaName"), 120)

    def hpa_status() -> dict:
        return get(cp, namespace, "hpa", hpa_name).get("status", {})

    waiting("KEDA's HPA to read the trigger's value", lambda: hpa_status().get("currentMetrics"), 180)
    assert replicas(cp, namespace, SERVICE) == 1

    svc = get(cp, namespace, "service", SERVICE)["spec"]
    address = f"{svc['clusterIP']}:{next(p['port'] for p in svc['ports'] if p['name'] == 'http')}"
    x = digits_data().x_test
    images = np.resize(x, (ROWS, *x.shape[1:])).astype(np.float32)
    answered, failures, stop = [], [], threading.Event()
    readings: list[float] = []

    def keep_asking() -> None:
        client = httpclient.InferenceServerClient(address, connection_timeout=60, network_timeout=60)
        try:
            while not stop.is_set():
                request = httpclient.InferInput("input", list(images.shape), "FP32")
                request.set_data_from_numpy(images, binary_data=True)
                try:
                    answer = client.infer(SERVICE, [request],
                                          outputs=[httpclient.InferRequestedOutput("label", binary_data=True)])
                    answered.append(answer.as_numpy("label").shape)
                except (InferenceServerException, OSError) as error:
                    failures.append(error)
        finally:
            client.close()

    def ready_replicas() -> int:
        return get(cp, namespace, "deployment", SERVICE).get("status", {}).get("readyReplicas", 0)

    def in_flight() -> float:
        result = prometheus.query(query)
        readings.append(float(result[0]["value"][1]) if result else 0.0)
        return readings[-1]

    clients = [threading.Thread(target=keep_asking, daemon=True) for _ in range(CLIENTS)]
    loaded = time.monotonic()
    for client in clients:
        client.start()
    try:
        # What the trigger reads: the clients' requests, held in the one server.
        try:
            wait_for("Prometheus to read more requests in flight than one replica's target",
                     lambda: in_flight() > TARGET, timeout=60, interval=0.5)
        except AssertionError as error:
            raise AssertionError(f"{error}; it read {readings}") from None
        waiting("load to raise the replicas to 2", lambda: ready_replicas() == 2, 300, interval=2)
        raised = time.monotonic()
    finally:
        stop.set()
        for client in clients:
            client.join(65)
    assert answered and not failures, f"{len(failures)} of {len(failures) + len(answered)} failed: {failures[:3]}"
    assert set(answered) == {(ROWS,)}
    assert hpa_status()["desiredReplicas"] == 2
    assert {p["spec"]["nodeName"] for p in server_pods(cp, namespace, SERVICE)} == {NODE_NAME}

    # Idle: nothing in flight; after the scale-down delay KEDA's HPA goes back to the floor.
    idle = time.monotonic()
    waiting("idleness to lower the replicas to 1", lambda: replicas(cp, namespace, SERVICE) == 1,
            SCALE_DOWN_DELAY_SECONDS + 180, interval=2)
    lowered = time.monotonic()
    assert in_flight() == 0
    print(f"\nrequests in flight as Prometheus read them under load: {max(readings):g} at most; "
          f"{len(answered)} requests answered, none failed; 2 replicas ready {raised - loaded:.0f} s after the load "
          f"began, 1 replica {lowered - idle:.0f} s after it ended")
