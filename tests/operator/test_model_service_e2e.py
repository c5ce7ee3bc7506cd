"""End to end: the pod the operator asks for, run as a real process, answers a real inference request.

kwok runs no containers, so the test plays the kubelet: it takes the server container from the Deployment the
operator made and runs its command with its environment, mapping what only exists in a pod to this machine
(emptyDir mounts to temporary directories, the ports to free loopback ports, torch to one thread).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.cluster.helpers import apply, get, wait_for
from tests.serving.serving_helpers import HOST, free_port, metric_samples, post_json, request

pytestmark = pytest.mark.cluster


def local_command(container: dict) -> list[str]:
    """The container's command, its executable taken from this environment (the image's is the same script)."""
    executable, *args = container["command"]
    return [str(Path(sys.executable).parent / executable), *args]


def local_environment(pod_spec: dict, container: dict, root: Path) -> tuple[dict[str, str], dict[str, int]]:
    """The container's environment with pod-only paths and ports mapped; and the port mapping by port name."""
    empty_dirs = {v["name"] for v in pod_spec["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: root / m["name"] for m in container["volumeMounts"] if m["name"] in empty_dirs}
    for directory in mounts.values():
        directory.mkdir(parents=True, exist_ok=True)
    ports = {p["name"]: free_port() for p in container["ports"]}
    container_ports = {str(p["containerPort"]): ports[p["name"]] for p in container["ports"]}
    env: dict[str, str] = {}
    for item in container["env"]:
        assert "valueFrom" not in item, f"{item['name']} comes from {item['valueFrom']}: not mapped by this test"
        value = item.get("value", "")  # the API server leaves out empty values
        for mount_path, local in mounts.items():
            if value == mount_path or value.startswith(mount_path + "/"):
                value = str(local) + value[len(mount_path):]
        env[item["name"]] = container_ports.get(value, value) if item["name"].endswith("_PORT") else value
    env = {name: str(value) for name, value in env.items()}
    env["SLIMSERVE_HOST"] = HOST
    env["SLIMSERVE_PVC_ROOT"] = str(root / "pvc")
    env["SLIMSERVE_TORCH_THREADS"] = "1"  # a pod follows its CPU limit; here the test machine is shared
    return {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1", **env}, ports


def http_get_probe(container: dict, probe: str, ports: dict[str, int]) -> tuple[str, str]:
    action = container[probe]["httpGet"]
    return f"{HOST}:{ports[action['port']]}", action["path"]


def test_the_generated_pod_serves_inference(control_plane, operator, namespace, tmp_path):
    cp = control_plane
    apply(cp, namespace, {
        "apiVersion": "slimserve.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "digits"},
        "spec": {"model": {"uri": "builtin://digits-mlp"}, "batching": {"maxBatchSize": 8, "maxLatencyMs": 2}},
    })
    cp.kubectl("wait", "-n", namespace, "--for=condition=Ready", "msvc/digits", "--timeout=60s", timeout=70)
    deployment = get(cp, namespace, "deployment", "digits")
    template = deployment["spec"]["template"]
    pod_spec = template["spec"]
    (container,) = pod_spec["containers"]
    env, ports = local_environment(pod_spec, container, tmp_path)

    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(local_command(container), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready_address, ready_path = http_get_probe(container, "readinessProbe", ports)

        def ready() -> bool:
            assert server.poll() is None, f"server exited:\n{log_path.read_text()}"
            try:
                return request(ready_address, "GET", ready_path, timeout=2)[0] == 200
            except OSError:
                return False

        wait_for("the readiness probe to pass", ready, timeout=180, interval=0.5)
        live_address, live_path = http_get_probe(container, "livenessProbe", ports)
        assert request(live_address, "GET", live_path)[0] == 200

        digits = load_digits()

        def infer(count: int) -> tuple[int, dict]:
            rows = digits.data[:count].astype(np.float32)
            document = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                                    "data": rows.ravel().tolist()}]}
            return post_json(f"{HOST}:{ports['http']}", f"/v2/models/{env['SLIMSERVE_MODEL_NAME']}/infer", document)

        status, answer = infer(8)
        assert status == 200, answer
        outputs = {output["name"]: output for output in answer["outputs"]}
        assert outputs["logits"]["shape"] == [8, 10]
        assert (np.asarray(outputs["label"]["data"]) == digits.target[:8]).mean() >= 0.75
        status, refused = infer(9)  # spec.batching.maxBatchSize reached the server
        assert status == 400 and "max batch size 8" in refused["error"]

        annotations = template["metadata"]["annotations"]
        scrape_port = ports[next(p["name"] for p in container["ports"]
                                 if str(p["containerPort"]) == annotations["prometheus.io/port"])]
        assert annotations["prometheus.io/path"] == "/metrics"
        samples = metric_samples(f"{HOST}:{scrape_port}")
        assert any(key.startswith("slimserve_inflight_requests") for key in samples)  # what KEDA scales on

        from tritonclient.grpc import InferenceServerClient

        with InferenceServerClient(f"{HOST}:{ports['grpc']}") as grpc_client:
            assert grpc_client.is_model_ready(env["SLIMSERVE_MODEL_NAME"])

        # The kubelet's SIGTERM: the server drains and exits within the grace period the pod was given.
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(pod_spec["terminationGracePeriodSeconds"]) == 0
        assert time.monotonic() - started < pod_spec["terminationGracePeriodSeconds"]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
