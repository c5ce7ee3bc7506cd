"""Operator scale: N ModelServices created at once on the local control plane, the operator as a process.

Measures, from the first create:
- the time until every ModelService's Deployment exists,
- the time until every ModelService reports Ready=True for its generation (kwok makes the pods ready),
- the operator's peak resident memory (VmHWM of its process),
and, after an operator restart with all N in place and their Services deleted, the time until the resume
passes have restored every Service, with no Deployment duplicated or rolled. Targets for N=500: Ready
within 60 s, peak RSS within 250 MB.

The same machine's control plane sets a floor the operator cannot beat, and on a shared machine it moves; so
a baseline runs first on a fresh control plane: the very same Deployments and Services applied directly (no
operator), timed until every Deployment exists and is available. The ratio operator/baseline is the
operator's own cost.

    .venv/bin/python benchmarks/operator_scale.py              # 500 services
    .venv/bin/python benchmarks/operator_scale.py --services 100

The control plane comes from tests/cluster (binaries built once by tests/cluster/build.sh).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from kubernetes import client, watch  # noqa: E402

from slimserve.api.model_service import ModelServiceSpec  # noqa: E402
from slimserve.controller import kube  # noqa: E402
from slimserve.controller.builders import model_service as builders  # noqa: E402
from slimserve.controller.config import OperatorConfig  # noqa: E402
from tests.cluster.controlplane import NODES_MANIFEST, ControlPlane  # noqa: E402
from tests.operator.conftest import CRDS, TEST_OPERATOR_CONFIG, OperatorProcess  # noqa: E402

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


def is_ready(item: dict) -> bool:
    status = item.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
    return ready.get("status") == "True" and status.get("observedGeneration") == item["metadata"]["generation"]


class Arrivals:
    """Watches a kind and notes when each object first satisfies `reached`; cheaper than polling lists of
    hundreds of objects, which would load the API server being measured."""

    def __init__(self, list_call, *args, reached=lambda item: True, **kwargs) -> None:
        self.times: dict[str, float] = {}
        self._reached = reached
        self._stop = False
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(list_call, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, list_call, args, kwargs) -> None:
        while not self._stop:
            try:
                for event in self._watch.stream(list_call, *args, deserialize=False, timeout_seconds=60, **kwargs):
                    item = event["object"]
                    name = item.get("metadata", {}).get("name")
                    if name and name not in self.times and event["type"] != "DELETED" and self._reached(item):
                        self.times[name] = time.monotonic()
            except Exception:  # the stream broke (or the cluster is going away): list and watch again
                time.sleep(0.2)

    def wait(self, what: str, count: int, deadline: float) -> float:
        """The monotonic time the `count`-th object arrived."""
        while len(self.times) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}: {len(self.times)} of {count}")
            time.sleep(0.2)
        return max(self.times.values())

    def stop(self) -> None:
        self._stop = True
        self._watch.stop()


def cluster(services: int) -> ControlPlane:
    """A fresh control plane with the CRDs and enough fake cpu nodes for `services` pods."""
    cp = ControlPlane.start()
    cp.kubectl("apply", "--server-side", "-f", str(CRDS))
    nodes = extra_cpu_nodes(services)
    if nodes:
        cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(nodes))
        cp.kubectl("wait", "--for=condition=Ready", *(f"node/{n['metadata']['name']}" for n in nodes), "--timeout=60s")
    for path in sorted(CRDS.glob("*.yaml")):
        cp.kubectl("wait", "--for=condition=Established", "-f", str(path), "--timeout=60s")
    return cp


def deployment_available(item: dict) -> bool:
    status = item.get("status") or {}
    return (status.get("observedGeneration", 0) >= item["metadata"].get("generation", 0)
            and status.get("availableReplicas", 0) >= (item.get("spec") or {}).get("replicas", 1))


def baseline(services: int, workers: int, timeout: float) -> dict[str, float]:
    """No operator: the same Deployments and Services applied straight away, as fast as the cluster takes them.

    What the cluster itself needs (scheduling, kwok, controllers, ClusterIP allocation) for this many services
    on this machine now; the operator's run is compared with it.
    """
    config = OperatorConfig.model_validate(TEST_OPERATOR_CONFIG)
    pool = config.node_pool("cpu")
    with cluster(services) as cp:
        namespace = cp.create_namespace("baseline")
        api = cp.api_client()
        try:
            apps = client.AppsV1Api(api)
            created = Arrivals(apps.list_namespaced_deployment, namespace, label_selector=SERVER_SELECTOR)
            available = Arrivals(apps.list_namespaced_deployment, namespace, label_selector=SERVER_SELECTOR,
                                 reached=deployment_available)

            def apply_children(index: int) -> None:
                body = model_service(index)
                owner = builders.Owner(body["metadata"]["name"], namespace, uid="")
                spec = ModelServiceSpec.from_json(body["spec"])
                model = builders.ArtifactToServe(spec.model.uri)
                for manifest in (builders.build_deployment(owner, spec, model, pool, config, replicas=1),
                                 builders.build_service(owner)):
                    del manifest["metadata"]["ownerReferences"]  # no ModelService to own them
                    kube.apply(api, manifest)

            start = time.monotonic()
            deadline = start + timeout
            with ThreadPoolExecutor(workers) as threads:
                list(threads.map(apply_children, range(services)))
            result = {
                "deployments": created.wait("every Deployment", services, deadline) - start,
                "ready": available.wait("every Deployment available", services, deadline) - start,
            }
            created.stop()
            available.stop()
            return result
        finally:
            api.close()


def with_operator(services: int, workers: int, timeout: float) -> dict[str, float]:
    with cluster(services) as cp:
        namespace = cp.create_namespace("scale")
        operator = OperatorProcess(cp, Path(tempfile.mkdtemp(prefix="slimserve-scale-"))).start()
        api = cp.api_client()
        custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
        try:
            deployments = Arrivals(apps.list_namespaced_deployment, namespace, label_selector=SERVER_SELECTOR)
            ready = Arrivals(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, reached=is_ready)
            with RssSampler(operator.process.pid) as rss:
                start = time.monotonic()
                deadline = start + timeout
                with ThreadPoolExecutor(workers) as threads:
                    list(threads.map(lambda i: custom.create_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, model_service(i)), range(services)))
                result = {
                    "deployments": deployments.wait("every Deployment", services, deadline) - start,
                    "ready": ready.wait("every ModelService Ready", services, deadline) - start,
                }
            deployments.stop()
            ready.stop()
            result["rss"] = rss.peak

            before = {d.metadata.name: d.metadata.generation
                      for d in apps.list_namespaced_deployment(namespace, label_selector=SERVER_SELECTOR).items}
            operator.stop()
            # Drift while the operator is away: every Service deleted, so the resume pass has to restore them.
            client.CoreV1Api(api).delete_collection_namespaced_service(namespace, label_selector=SERVER_SELECTOR)
            restart = time.monotonic()
            operator.start()
            with RssSampler(operator.process.pid) as restart_rss:
                restored = Arrivals(client.CoreV1Api(api).list_namespaced_service, namespace,
                                    label_selector=SERVER_SELECTOR)
                result["resumed"] = restored.wait("every Service restored", services, restart + timeout) - restart
                restored.stop()
            result["restart_rss"] = restart_rss.peak
            after = apps.list_namespaced_deployment(namespace, label_selector=SERVER_SELECTOR).items
            result["duplicates"] = len(after) - services
            result["rolled"] = sum(1 for d in after if d.metadata.generation != before.get(d.metadata.name))
            return result
        finally:
            operator.stop()
            api.close()


def report(services: int, workers: int, base: dict[str, float], run: dict[str, float], load: float) -> bool:
    print(f"\n{services} services, created by {workers} client threads; 1-minute load average at the start: "
          f"{load:.1f} on {os.cpu_count()} CPUs\n")
    print(f"{'measure':<48}{'baseline':>10}{'operator':>10}{'ratio':>8}{'target':>10}")
    rows = [
        ("time until every Deployment exists (s)", base["deployments"], run["deployments"], ""),
        ("time until every one is available / Ready (s)", base["ready"], run["ready"], f"<= {READY_TARGET_S:.0f}"),
    ]
    for name, direct, operated, target in rows:
        print(f"{name:<48}{direct:>10.1f}{operated:>10.1f}{operated / direct:>8.2f}{target:>10}")
    print(f"{'operator peak RSS (MB)':<48}{'':>10}{run['rss']:>10.0f}{'':>8}{f'<= {RSS_TARGET_MB:.0f}':>10}")
    print(f"{'restart: every deleted Service back (s)':<48}{'':>10}{run['resumed']:>10.1f}")
    print(f"{'restart: operator peak RSS (MB)':<48}{'':>10}{run['restart_rss']:>10.0f}{'':>8}{f'<= {RSS_TARGET_MB:.0f}':>10}")
    print(f"{'restart: duplicate Deployments':<48}{'':>10}{run['duplicates']:>10}{'':>8}{'0':>10}")
    print(f"{'restart: Deployments whose generation changed':<48}{'':>10}{run['rolled']:>10}{'':>8}{'0':>10}")
    met = (run["ready"] <= READY_TARGET_S and max(run["rss"], run["restart_rss"]) <= RSS_TARGET_MB
           and run["duplicates"] == 0 and run["rolled"] == 0)
    print(f"\ntargets {'met' if met else 'MISSED'}")
    return met


def run(services: int, workers: int, timeout: float, skip_baseline: bool) -> int:
    load = os.getloadavg()[0]
    base = {"deployments": float("nan"), "ready": float("nan")} if skip_baseline else baseline(services, workers, timeout)
    result = with_operator(services, workers, timeout)
    return 0 if report(services, workers, base, result, load) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=500, help="ModelServices to create (default 500)")
    parser.add_argument("--workers", type=int, default=8, help="client threads creating them (default 8)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds per phase")
    parser.add_argument("--skip-baseline", action="store_true", help="only the run with the operator")
    args = parser.parse_args(argv)
    return run(args.services, args.workers, args.timeout, args.skip_baseline)


if __name__ == "__main__":
    sys.exit(main())
