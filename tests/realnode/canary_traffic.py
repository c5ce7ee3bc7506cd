"""A canary on the real node and the traffic through its Service's ClusterIP: which version answers each request.

Every request goes on a new connection: kube-proxy's iptables rules pick an endpoint at random per connection
(`-m statistic --mode random`), so the share each version gets is the share of its endpoints. The version is the
OIP infer response's `model_version`: an artifact's digest prefix, `builtin` for a builtin model. Used by
tests/realnode/test_canary_on_real_node.py and benchmarks/scale_from_zero.py.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
from collections import Counter

from tests.cluster.helpers import get, wait_for
from tests.operator.test_model_service_cluster import status_of
from tests.serving.serving_helpers import post_json

from .node import POOL

STABLE_JOB = "digits-pruned"
STABLE_VERSION_DIGITS = 12  # the server's version of an artifact: its digest's first 12 hex digits
CANDIDATE_URI = "builtin://digits-mlp"  # the model the stable artifact was pruned from
CANDIDATE_VERSION = "builtin"
# Five servers and a surge share the node's two cores with everything else: one torch thread each (the CPU limit),
# small requests so that all of them schedule.
SMALL_POD = {"requests": {"cpu": "50m", "memory": "384Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
VERSION_LABEL = "slimserve.io/model-version"
HTTP_PORT_NAME = "http"
# One digits image of zeros: the answer's content does not matter, only which version gave it.
INFER = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
REQUEST_SECONDS = 10


def stable_job(claim: str) -> dict:
    """The stable artifact, made cheaply: a fifth of the digits MLP's weights zeroed (no finetuning), on the claim.
    Not quantized, so its servers run it eagerly: a quantized artifact is compiled at load, minutes of CPU for each
    of the node's pods."""
    return {
        "apiVersion": "slimserve.io/v1alpha1", "kind": "CompressionJob", "metadata": {"name": STABLE_JOB},
        "spec": {"model": {"uri": "builtin://digits-mlp"},
                 "steps": [{"prune": {"method": "unstructured", "amount": 0.2}}],
                 "output": {"uri": f"pvc://{claim}/{STABLE_JOB}"}, "nodePool": POOL},
    }


def canary_service(name: str, replicas: int, percent: int) -> dict:
    """The stable artifact on `replicas` small pods of pool `real`, the builtin MLP as a canary at `percent`."""
    return {
        "apiVersion": "slimserve.io/v1alpha1", "kind": "ModelService", "metadata": {"name": name},
        "spec": {"model": {"compressionJobRef": {"name": STABLE_JOB}}, "nodePool": POOL, "replicas": replicas,
                 "resources": SMALL_POD,
                 "canary": {"model": {"uri": CANDIDATE_URI}, "trafficPercent": percent}},
    }


def stable_version(cp, namespace: str) -> str:
    """The version the stable artifact's servers answer with."""
    digest = get(cp, namespace, "compressionjob", STABLE_JOB)["status"]["artifact"]["digest"]
    return digest.removeprefix("sha256:")[:STABLE_VERSION_DIGITS]


def http_address(cp, namespace: str, service: str) -> str:
    spec = get(cp, namespace, "service", service)["spec"]
    return f"{spec['clusterIP']}:{next(p['port'] for p in spec['ports'] if p['name'] == HTTP_PORT_NAME)}"


def ask(address: str, model: str) -> str:
    """One infer request on a new connection: the version that answered (an error when none did)."""
    status, body = post_json(address, f"/v2/models/{model}/infer", INFER, timeout=REQUEST_SECONDS)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {json.dumps(body)[:300]}")
    return body["model_version"]


def versions_answering(address: str, model: str, requests: int) -> Counter:
    """How many of `requests` sequential requests each version answered."""
    return Counter(ask(address, model) for _ in range(requests))


class KeepAsking:
    """A client asking on a new connection after each answer until stopped: the versions that answered, and the
    failures (an error status, a refused or reset connection, a timeout)."""

    def __init__(self, address: str, model: str):
        self.address, self.model = address, model
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(ask(self.address, self.model))
            except (OSError, http.client.HTTPException, RuntimeError) as error:
                self.failures.append(f"{type(error).__name__}: {error}")

    def __enter__(self) -> "KeepAsking":
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(REQUEST_SECONDS + 5)

    @property
    def failed_share(self) -> float:
        total = len(self.answers) + len(self.failures)
        return len(self.failures) / total if total else 0.0

    def answered_after(self, count: int) -> bool:
        return len(self.answers) > count


def set_traffic(cp, namespace: str, name: str, percent: int) -> None:
    cp.kubectl("patch", "-n", namespace, "modelservice", name, "--type=merge",
               "-p", json.dumps({"spec": {"canary": {"trafficPercent": percent}}}))


def ready_pod_ips(cp, namespace: str, name: str) -> dict[str, str]:
    """Pod IP -> version of the Ready server pods the Service selects."""
    selector = get(cp, namespace, "service", name)["spec"]["selector"]
    pods = get(cp, namespace, "pods", "-l", ",".join(f"{k}={v}" for k, v in selector.items()))["items"]
    return {pod["status"]["podIP"]: pod["metadata"]["labels"].get(VERSION_LABEL, "")
            for pod in pods if pod["status"].get("podIP") and not pod["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])}


def programmed_endpoints(namespace: str, name: str) -> set[str]:
    """The pod IPs kube-proxy's iptables rules send the Service's http port to now (its `KUBE-SVC-` chain's
    jumps, commented `NAMESPACE/NAME:http -> IP:PORT`)."""
    rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
    marker = f'--comment "{namespace}/{name}:{HTTP_PORT_NAME} -> '
    return {line.split(marker, 1)[1].split(":", 1)[0]
            for line in rules.splitlines() if line.startswith("-A KUBE-SVC-") and marker in line}


def wait_split(cp, namespace: str, name: str, stable: int, canary: int, percent: int, timeout: float = 600) -> dict:
    """Once status.canary says both sides run what `percent` asks for, all Ready, and kube-proxy routes the
    Service to exactly those pods: pod IP -> version."""
    def settled():
        found = status_of(cp, namespace, name).get("canary") or {}
        return (found.get("stableReplicas"), found.get("readyReplicas"), found.get("trafficPercent"),
                found.get("message")) == (stable, canary, percent, None)

    wait_for(f"{name}: canary at {percent}% ({stable} + {canary} Ready)", settled, timeout=timeout, interval=1)

    def routed():
        ready = ready_pod_ips(cp, namespace, name)
        versions = Counter(ready.values())
        wanted = versions == +Counter({"stable": stable, "canary": canary})
        return wanted and programmed_endpoints(namespace, name) == set(ready) and ready

    return wait_for(f"{name}: kube-proxy routing to {stable} stable and {canary} canary pods", routed,
                    timeout=timeout, interval=1)
