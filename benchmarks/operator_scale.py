"""Operator scale: N ModelServices created at once on the local control plane, the operator as a process.

Measures, from the first create:
- the time until every ModelService's Deployment exists,
- the time until every ModelService reports Ready=True for its generation (kwok makes the pods ready),
- the operator's peak resident memory (VmHWM of its process),
and, after an operator restart with all N in place, the time until every child has been re-applied (the
resume pass) with none duplicated. Targets for N=500: Ready within 60 s, peak RSS within 250 MB.

    .venv/bin/python benchmarks/operator_scale.py              # 500 services
    .venv/bin/python benchmarks/operator_scale.py --services 100

The control plane comes from tests/cluster (binaries built once by tests/cluster/build.sh).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from kubernetes import client  # noqa: E402

from tests.cluster.controlplane import NODES_MANIFEST, ControlPlane  # noqa: E402
from tests.operator.conftest import CRDS, OperatorProcess  # noqa: E402

GROUP, VERSION, PLURAL = "slimserve.io", "v1alpha1", "modelservices"
SERVER_SELECTOR = "app.kubernetes.io/managed-by=slimserve-operator,app.kubernetes.io/component=server"
READY_TARGET_S = 60.0
RSS_TARGET_MB = 250.0
PODS_PER_NODE = 100  # kwok nodes allow 110; keep some room
# Small pods: the point is the operator, not how many server pods fit on the fake nodes.
RESOURCES = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}}


def model_service(index: int) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelService",
        "metadata": {"name": f"svc-{index:04d}"},
        "spec": {"model": {"uri": "builtin://digits-mlp"}, "replicas": 1, "resources": RESOURCES},
    }


def extra_cpu_nodes(pods: int) -> list[dict]:
    """More fake nodes of the cpu pool, so every server pod fits (the test cluster has 3, 110 pods each)."""
    nodes = [n for n in yaml.safe_load_all(NODES_MANIFEST.read_text()) if n]
    template = next(n for n in nodes if n["metadata"]["labels"].get("slimserve.io/pool") == "cpu")
    cpu_nodes = sum(1 for n in nodes if n["metadata"]["labels"].get("slimserve.io/pool") == "cpu")
    extra = []
    for index in range(max(0, math.ceil(pods / PODS_PER_NODE) - cpu_nodes)):
        node = copy.deepcopy(template)
        name = f"kwok-bench-{index}"
        node["metadata"]["name"] = name
        node["metadata"]["labels"]["kubernetes.io/hostname"] = name
        extra.append(node)
    return extra


def peak_rss_mb(pid: int) -> float:
    """The process's resident-set high-water mark (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


class RssSampler:
    """Samples VmHWM every half second, so the peak is known even if the process is gone by the end."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        try:
            self.peak = max(self.peak, peak_rss_mb(self.pid))
        except (OSError, RuntimeError):
            pass

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()


def count_deployments(apps: client.AppsV1Api, namespace: str) -> int:
    return len(apps.list_namespaced_deployment(namespace, label_selector=SERVER_SELECTOR).items)


def count_ready(custom: client.CustomObjectsApi, namespace: str) -> int:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    ready = 0
    for item in items:
        status = item.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        condition = conditions.get("Ready") or {}
        generation = item["metadata"]["generation"]
        if condition.get("status") == "True" and status.get("observedGeneration") == generation:
            ready += 1
    return ready


def wait_until(what: str, check, deadline: float, interval: float = 1.0) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def run(services: int, workers: int, timeout: float) -> int:
    with ControlPlane.start() as cp:
        cp.kubectl("apply", "--server-side", "-f", str(CRDS))
        nodes = extra_cpu_nodes(services)
        if nodes:
            cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(nodes))
            names = [f"node/{n['metadata']['name']}" for n in nodes]
            cp.kubectl("wait", "--for=condition=Ready", *names, "--timeout=60s")
        for path in sorted(CRDS.glob("*.yaml")):
            cp.kubectl("wait", "--for=condition=Established", "-f", str(path), "--timeout=60s")
        namespace = cp.create_namespace("scale")
        operator = OperatorProcess(cp, Path(tempfile.mkdtemp(prefix="slimserve-scale-"))).start()
        api = cp.api_client()
        custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
        try:
            with RssSampler(operator.process.pid) as rss:
                start = time.monotonic()
                deadline = start + timeout
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(lambda i: custom.create_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, model_service(i)), range(services)))
                created_s = time.monotonic() - start
                wait_until("every Deployment", lambda: count_deployments(apps, namespace) >= services, deadline)
                deployments_s = time.monotonic() - start
                wait_until("every ModelService Ready", lambda: count_ready(custom, namespace) >= services, deadline)
                ready_s = time.monotonic() - start

            before = {d.metadata.name: d.metadata.generation
                      for d in apps.list_namespaced_deployment(namespace, label_selector=SERVER_SELECTOR).items}
            operator.stop()
            # Drift while the operator is away: every Service deleted, so the resume pass has to restore them.
            client.CoreV1Api(api).delete_collection_namespaced_service(namespace, label_selector=SERVER_SELECTOR)
            restart = time.monotonic()
            operator.start()
            with RssSampler(operator.process.pid) as restart_rss:
                core = client.CoreV1Api(api)
                wait_until("every Service restored", lambda: len(core.list_namespaced_service(
                    namespace, label_selector=SERVER_SELECTOR).items) >= services, restart + timeout)
                resumed_s = time.monotonic() - restart
            after = apps.list_namespaced_deployment(namespace, label_selector=SERVER_SELECTOR).items
            duplicates = len(after) - services
            rolled = sum(1 for d in after if d.metadata.generation != before.get(d.metadata.name))
        finally:
            operator.stop()
            api.close()

    print(f"\nModelServices: {services} (created by {workers} client threads in {created_s:.1f} s)\n")
    print(f"{'measure':<52}{'value':>10}{'target':>10}")
    rows = [
        ("time until every Deployment exists (s)", f"{deployments_s:.1f}", ""),
        ("time until every ModelService is Ready (s)", f"{ready_s:.1f}", f"<= {READY_TARGET_S:.0f}"),
        ("operator peak RSS (MB)", f"{rss.peak:.0f}", f"<= {RSS_TARGET_MB:.0f}"),
        ("restart: time until every deleted Service is back (s)", f"{resumed_s:.1f}", ""),
        ("restart: operator peak RSS (MB)", f"{restart_rss.peak:.0f}", f"<= {RSS_TARGET_MB:.0f}"),
        ("restart: duplicate Deployments", str(duplicates), "0"),
        ("restart: Deployments whose generation changed", str(rolled), "0"),
    ]
    for name, value, target in rows:
        print(f"{name:<52}{value:>10}{target:>10}")
    met = ready_s <= READY_TARGET_S and max(rss.peak, restart_rss.peak) <= RSS_TARGET_MB and duplicates == 0
    print(f"\ntargets {'met' if met else 'MISSED'}")
    return 0 if met else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=500, help="ModelServices to create (default 500)")
    parser.add_argument("--workers", type=int, default=8, help="client threads creating them (default 8)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds per phase")
    args = parser.parse_args(argv)
    return run(args.services, args.workers, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
