"""The quick start on a real node: the operator's own pods run in containers scheduled by Kubernetes.

The real node (`real_node`, conftest.py) is a kubelet on containerd joined to the session's control plane as pool
`real`, tainted so that only pods tolerating it land there. The operator, configured with that pool (its
nodeSelector and toleration) and the images `make images BASE=local` builds (imported from podman), runs
examples/quickstart.yaml there: the compression pod writes the artifact to the claim `models` (a hostPath
PersistentVolume on a temporary directory), the ModelService's pod serves it, and requests from the host through
the Service's ClusterIP (kube-proxy's rules) get the right digits. A spec change then rolls the pod while the
host keeps asking: no request fails.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from slimserve.artifacts import MANIFEST_NAME
from slimserve.models.digits import digits_data
from tests.cluster.helpers import apply, get, wait_for, wait_for_event
# namespace: one of its own, which the session's admin operator (if a run has one) leaves alone
from tests.containers.test_quickstart_in_containers import POD_USER, namespace  # noqa: F401
from tests.operator.conftest import TEST_OPERATOR_CONFIG, OperatorProcess, crds  # noqa: F401  (crds: the CRDs)
from tests.operator.test_compression_job_cluster import wait_phase
from tests.serving.serving_helpers import infer_labels, post_json

from .node import NODE_NAME, POOL, POOL_LABEL, TAINT, TOLERATION, pause_pod

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"
HELD_OUT_ROWS = 64


def real_pool_config(node_images: dict[str, str]) -> dict:
    """The operator's configuration with pool `real` and the images imported into the node (never pulled)."""
    return {
        **TEST_OPERATOR_CONFIG,
        "images": {name: {"repository": ref.rsplit(":", 1)[0], "tag": ref.rsplit(":", 1)[1], "pullPolicy": "Never"}
                   for name, ref in node_images.items() if name in ("compressor", "server")},
        "nodePools": {**TEST_OPERATOR_CONFIG["nodePools"],
                      POOL: {"nodeSelector": {POOL_LABEL: POOL}, "tolerations": [TOLERATION]}},
    }


@pytest.fixture
def operator(control_plane, crds, namespace, node_images, tmp_path):  # noqa: F811
    """The real operator, acting in that namespace, with pool `real` and the images imported into the node."""
    proc = OperatorProcess(control_plane, tmp_path / "operator", extra_args=("--namespace", namespace))
    proc.config_path.write_text(yaml.safe_dump(real_pool_config(node_images)))
    proc.start()
    yield proc
    proc.stop()


def host_path_claim(cp, namespace: str, claim: str, directory: Path) -> None:
    """The claim bound to a hostPath PersistentVolume on `directory`, owned by the pods' user."""
    directory.mkdir()
    os.chown(directory, POD_USER, POD_USER)
    volume = f"{namespace}-{claim}"
    apply(cp, namespace, {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "real-host",
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(directory), "type": "Directory"},
                 "claimRef": {"namespace": namespace, "name": claim}},
    }, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "real-host", "volumeName": volume,
                 "resources": {"requests": {"storage": "1Gi"}}},
    })
    wait_for(f"claim {claim} bound", lambda: get(cp, namespace, "pvc", claim).get("status", {}).get("phase") == "Bound")


def test_the_real_node_takes_only_pods_that_tolerate_it(control_plane, real_node, namespace):
    cp = control_plane
    node = get(cp, "default", "node", NODE_NAME)
    assert TAINT in node["spec"]["taints"] and node["metadata"]["labels"][POOL_LABEL] == POOL
    # Aimed at the node but not tolerating its taint: the scheduler says why it stays Pending.
    apply(cp, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "intolerant"},
        "spec": {"nodeSelector": {POOL_LABEL: POOL}, "containers": [{"name": "c", "image": "none"}]},
    })
    wait_for_event(cp, namespace, "intolerant", reason="FailedScheduling", message="untolerated taint")
    assert not get(cp, namespace, "pod", "intolerant")["spec"].get("nodeName")


def test_the_kubelet_and_kube_proxy_hold_only_their_own_rights(control_plane, real_node, namespace):
    cp = control_plane
    kubelet, proxy = real_node.kubelet_kubeconfig, real_node.proxy_kubeconfig

    def user(kubeconfig) -> tuple[str, list[str]]:
        info = json.loads(cp.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)["status"]
        return info["userInfo"]["username"], info["userInfo"].get("groups", [])

    name, groups = user(kubelet)
    assert name == f"system:node:{NODE_NAME}" and "system:nodes" in groups
    assert user(proxy)[0] == "system:kube-proxy"

    # The Node authorizer: the Secret a pod on its node references, yes; any other Secret, no.
    for secret in ("referenced", "unreferenced"):
        cp.kubectl("create", "secret", "generic", secret, "-n", namespace, "--from-literal=key=value")
    apply(cp, namespace, pause_pod("uses-a-secret", volumes=[{"name": "s", "secret": {"secretName": "referenced"}}]))
    wait_for("the kubelet to read the Secret of its pod", lambda: cp.kubectl(
        "get", "secret", "referenced", "-n", namespace, kubeconfig=kubelet, check=False).returncode == 0)
    refused = cp.kubectl("get", "secret", "unreferenced", "-n", namespace, kubeconfig=kubelet, check=False)
    assert refused.returncode != 0 and f"no relationship found between node '{NODE_NAME}'" in refused.stderr
    # Its own Node object only, not even another's to read; and NodeRestriction keeps it from giving itself a
    # label that workloads trust for placement.
    other = get(cp, "default", "nodes", "-l", "type=kwok")["items"][0]["metadata"]["name"]
    refused = cp.kubectl("get", "node", other, kubeconfig=kubelet, check=False)
    assert refused.returncode != 0 and "only its own Node object" in refused.stderr
    restricted = "node-restriction.kubernetes.io/trusted"
    refused = cp.kubectl("label", "node", NODE_NAME, f"{restricted}=yes", kubeconfig=kubelet, check=False)
    assert refused.returncode != 0 and f"is not allowed to modify labels: {restricted}" in refused.stderr

    def can(kubeconfig, *request: str) -> str:
        return cp.kubectl("auth", "can-i", *request, kubeconfig=kubeconfig, check=False).stdout.strip()

    # kube-proxy watches Services and EndpointSlices everywhere, and reads no Secret.
    assert can(proxy, "watch", "endpointslices.discovery.k8s.io", "--all-namespaces") == "yes"
    assert can(proxy, "get", "secrets", "-n", namespace) == "no"


def test_quickstart_runs_on_the_real_node(control_plane, real_node, operator, namespace, tmp_path):
    from tritonclient import grpc as grpcclient
    from tritonclient import http as httpclient

    cp = control_plane
    claim_dir = tmp_path / "claim-models"
    host_path_claim(cp, namespace, "models", claim_dir)
    job, service = yaml.safe_load_all(EXAMPLE.read_text())
    for manifest in (job, service):
        manifest["spec"]["nodePool"] = POOL
    apply(cp, namespace, job, service)

    status = wait_phase(cp, namespace, "digits-slim", "Succeeded", timeout=900)
    assert status["artifact"]["uri"] == "pvc://models/digits-slim"
    assert (claim_dir / "digits-slim" / MANIFEST_NAME).is_file()
    cp.kubectl("wait", "-n", namespace, "--for=condition=Ready", "msvc/digits", "--timeout=300s", timeout=310)
    selector = get(cp, namespace, "deployment", "digits")["spec"]["selector"]["matchLabels"]
    pods = get(cp, namespace, "pods", "-l", ",".join(f"{k}={v}" for k, v in selector.items()))["items"]
    assert pods and {pod["spec"]["nodeName"] for pod in pods} == {NODE_NAME}

    # From the host, through the Service's ClusterIP: kube-proxy routes it to the pod on the node's bridge.
    svc = get(cp, namespace, "service", "digits")["spec"]
    ports = {p["name"]: p["port"] for p in svc["ports"]}
    http_port = ports["http"]
    model = service["metadata"]["name"]
    data = digits_data()
    rows, digits = data.x_test[:HELD_OUT_ROWS], data.y_test[:HELD_OUT_ROWS]
    labels = infer_labels(httpclient, f"{svc['clusterIP']}:{http_port}", model, rows)
    assert (labels == digits).mean() >= 0.9  # the digits CNN holds ~0.97 within the job's 0.01 budget
    # gRPC (HTTP/2) through the same ClusterIP: the same digits
    np.testing.assert_array_equal(infer_labels(grpcclient, f"{svc['clusterIP']}:{ports['grpc']}", model, rows),
                                  labels)

    # A spec change rolls the pod (a new one Ready before the old one drains): no request fails meanwhile.
    (old_pod,) = pods
    infer = {"inputs": [{"name": "input", "shape": [1, *rows.shape[1:]], "datatype": "FP32",
                         "data": rows[0].ravel().tolist()}]}
    answers, failures, stop = [], [], threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            try:
                status, body = post_json(f"{svc['clusterIP']}:{http_port}", f"/v2/models/{model}/infer", infer,
                                         timeout=10)
                (answers if status == 200 else failures).append((status, body))
            except OSError as error:
                failures.append(error)

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    try:
        cp.kubectl("patch", "-n", namespace, "modelservice", "digits", "--type=merge",
                   "-p", '{"spec": {"batching": {"maxLatencyMs": 3}}}')
        cp.kubectl("rollout", "status", "-n", namespace, "deployment/digits", "--timeout=300s", timeout=310)
        cp.kubectl("wait", "-n", namespace, "--for=delete", f"pod/{old_pod['metadata']['name']}", "--timeout=120s",
                   timeout=130)
        served_before = len(answers)
        wait_for("an answer from the new pod", lambda: len(answers) > served_before, timeout=30)
    finally:
        stop.set()
        asker.join(15)
    (new_pod,) = get(cp, namespace, "pods", "-l", ",".join(f"{k}={v}" for k, v in selector.items()))["items"]
    assert new_pod["metadata"]["uid"] != old_pod["metadata"]["uid"] and new_pod["spec"]["nodeName"] == NODE_NAME
    assert not failures, f"{len(failures)} of {len(failures) + len(answers)} requests failed: {failures[:3]}"
    labels_answered = {next(o for o in answer["outputs"] if o["name"] == "label")["data"][0] for _, answer in answers}
    assert labels_answered == {int(digits[0])}
