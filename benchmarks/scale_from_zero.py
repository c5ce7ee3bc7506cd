"""What clients see while a ModelService changes shape on the real node (tests/realnode): a kubelet on containerd
joined to the local control plane as pool `real`, the operator as a process, requests from the host through the
Service's ClusterIP (kube-proxy's iptables rules), each on a new connection.

Parts (--part, every one by default):
- canary: a ModelService of 5 small replicas with a canary at 20% (tests/realnode/canary_traffic.py: a cheap
  pruned artifact as the stable version, the builtin MLP it came from as the candidate). Printed: the canary's
  share of 500 requests at 20%; then, while a client keeps asking, the canary is promoted (trafficPercent 100: the
  side gaining replicas is Ready before the other shrinks) and rolled back (trafficPercent 0), and per change: the
  requests made, the share that failed (target: none), the seconds until kube-proxy routes only to the side that
  gained, and the versions that answered.

    .venv/bin/python benchmarks/scale_from_zero.py --part canary

- from-zero: KEDA's operator and the KEDA HTTP add-on beside the node (tests/autoscaling/components.py) and a
  ModelService with minReplicas 0 (the builtin digits MLP on a small pod). Once KEDA has scaled it to zero, one
  request through the interceptor. Printed: the seconds from that request to its answer, when the Deployment was
  scaled to 1 and when its pod was ready (from the request, polled every quarter second), and the median time of a
  request once the pod runs, with the ratio of the two. Needs `make autoscaling-build`.

    .venv/bin/python benchmarks/scale_from_zero.py --part from-zero

Needs root, the node's binaries (tests/cluster/build.sh) and podman (`make images BASE=local`). The real node is
one per machine (a lock): while another process holds it, this waits (up to --wait seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from tests.autoscaling.components import HTTP_ADD_ON_VERSION, KEDA_HTTP_BINARIES, keda_http_add_on, missing  # noqa: E402
from tests.autoscaling.test_http_add_on_versions import SUPPORTED  # noqa: E402
from tests.autoscaling.wake import at_zero, infer, route_to, to_zero_service  # noqa: E402
from tests.cluster.controlplane import ControlPlane  # noqa: E402
from tests.cluster.helpers import apply, exists, get, wait_established, wait_for  # noqa: E402
from tests.operator.conftest import CRDS, OperatorProcess  # noqa: E402
from tests.operator.test_compression_job_cluster import wait_phase  # noqa: E402
from tests.realnode.canary_traffic import (  # noqa: E402
    CANDIDATE_VERSION,
    STABLE_JOB,
    KeepAsking,
    canary_service,
    http_address,
    set_traffic,
    stable_job,
    versions_answering,
    wait_split,
)
from tests.realnode.node import NodeBusy, RealNode, cannot_run  # noqa: E402
from tests.realnode.test_quickstart_on_real_node import host_path_claim, real_pool_config  # noqa: E402

NODE_POLL_SECONDS = 30
SPLIT_REQUESTS = 500
WARM_REQUESTS = 20


@dataclass
class RealCluster:
    """The control plane, its real node, and the operator acting in `namespace` with pool `real`."""

    cp: ControlPlane
    node: RealNode
    namespace: str
    workdir: Path


def checkout_images() -> dict[str, str]:
    """This checkout's images (`make images BASE=local`, a no-op when current): name -> content-tagged ref."""
    out = subprocess.run(
        ["make", "-s", "images", "BASE=local", "CONTAINER_ENGINE=podman", "IMAGES=operator compressor server"],
        cwd=REPO, capture_output=True, text=True, timeout=3600, check=True)
    refs = [line for line in out.stdout.split() if ":content-" in line]
    return {ref.rsplit("/", 1)[1].split(":")[0]: ref for ref in refs}


def join_when_free(cp: ControlPlane, wait: float) -> RealNode:
    deadline = time.monotonic() + wait
    while True:
        try:
            return RealNode.join(cp)
        except NodeBusy:
            if time.monotonic() > deadline:
                raise
            print(f"the real node is busy; asking again in {NODE_POLL_SECONDS} s", flush=True)
            time.sleep(NODE_POLL_SECONDS)


@contextlib.contextmanager
def real_cluster(wait: float) -> Iterator[RealCluster]:
    reason = cannot_run()
    if reason:
        sys.exit(reason)
    images = checkout_images()
    with ControlPlane.start() as cp, tempfile.TemporaryDirectory(prefix="scale-from-zero-") as workdir:
        cp.kubectl("apply", "--server-side", "-f", str(CRDS))
        wait_established(cp, *(yaml.safe_load(path.read_text())["metadata"]["name"]
                               for path in sorted(CRDS.glob("*.yaml"))))
        node = join_when_free(cp, wait)
        try:
            node.import_from_podman(*(ref for ref in images.values() if ref not in node.images()))
            namespace = cp.create_namespace("scale-from-zero")
            operator = OperatorProcess(cp, Path(workdir) / "operator", extra_args=("--namespace", namespace))
            operator.config_path.write_text(yaml.safe_dump(real_pool_config(images)))
            operator.start()
            try:
                yield RealCluster(cp, node, namespace, Path(workdir))
            finally:
                operator.stop()
                cp.delete_namespace(namespace)
        finally:
            node.leave()


# ---- canary ---------------------------------------------------------------------------------------------


def canary_rollouts(cluster: RealCluster) -> None:
    """Failed requests while a canary at 20% of 5 replicas is promoted, then rolled back."""
    cp, namespace = cluster.cp, cluster.namespace
    host_path_claim(cp, namespace, "models", cluster.workdir / "claim-models")
    apply(cp, namespace, stable_job("models"), canary_service("digits", 5, 20))
    wait_phase(cp, namespace, STABLE_JOB, "Succeeded", timeout=600)
    wait_split(cp, namespace, "digits", 4, 1, 20)
    address = http_address(cp, namespace, "digits")
    answered = versions_answering(address, "digits", SPLIT_REQUESTS)
    print(f"at 20%: the canary answered {answered[CANDIDATE_VERSION]} of {SPLIT_REQUESTS} "
          f"({answered[CANDIDATE_VERSION] / SPLIT_REQUESTS:.1%})")
    print(f"{'change':<24} {'requests':>8} {'failed':>7} {'share':>7} {'seconds':>8}  versions answering")
    for change, percent, (stable, canary) in (("promote 20% -> 100%", 100, (0, 5)),
                                              ("roll back 100% -> 0%", 0, (5, 0))):
        start = time.monotonic()
        with KeepAsking(address, "digits") as client:
            set_traffic(cp, namespace, "digits", percent)
            wait_split(cp, namespace, "digits", stable, canary, percent)
            seconds = time.monotonic() - start
        requests = len(client.answers) + len(client.failures)
        print(f"{change:<24} {requests:>8} {len(client.failures):>7} {client.failed_share:>7.2%} {seconds:>8.1f}  "
              f"{dict(Counter(client.answers))}", flush=True)
        for failure in client.failures[:3]:
            print(f"    {failure}")


# ---- from zero ------------------------------------------------------------------------------------------


class DeploymentTimeline(threading.Thread):
    """When a Deployment's replicas were first asked for (KEDA's scale) and first ready, polled from the start."""

    def __init__(self, cp: ControlPlane, namespace: str, name: str):
        super().__init__(daemon=True)
        self.cp, self.namespace, self.name = cp, namespace, name
        self.start_time = time.monotonic()
        self.scaled: float | None = None
        self.ready: float | None = None
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set() and self.ready is None:
            deployment = get(self.cp, self.namespace, "deployment", self.name)
            now = time.monotonic() - self.start_time
            if self.scaled is None and deployment["spec"].get("replicas", 0) >= 1:
                self.scaled = now
            if deployment.get("status", {}).get("readyReplicas", 0) >= 1:
                self.ready = now
            self._done.wait(0.25)

    def stop(self) -> None:
        self._done.set()
        self.join(10)


def from_zero(cluster: RealCluster) -> None:
    """Seconds from the first request at zero replicas to its answer, through the KEDA HTTP add-on's interceptor,
    beside a request's once a pod runs."""
    cp, namespace = cluster.cp, cluster.namespace
    reason = missing(*KEDA_HTTP_BINARIES)
    if reason:
        print(f"not measured: {reason}")
        return
    name = "sleepy"
    with keda_http_add_on(cp, namespace, cluster.workdir / "keda", SUPPORTED[HTTP_ADD_ON_VERSION]) as keda:
        apply(cp, namespace, to_zero_service(name))
        wait_for("KEDA to scale the service to zero", lambda: exists(cp, namespace, "deployment", name)
                 and at_zero(cp, namespace, name), timeout=600, interval=1)
        host = route_to(keda, cp, namespace, name)
        timeline = DeploymentTimeline(cp, namespace, name)
        timeline.start()
        code, headers, answer = infer(keda, host, name)
        first = time.monotonic() - timeline.start_time
        timeline.stop()
        if code != 200:
            print(f"the first request failed after {first:.1f} s: {code} {answer!r:.300}\n{keda.logs()}")
            return
        cold_start = headers.get("x-keda-http-cold-start")
        warm = []
        for _ in range(WARM_REQUESTS):
            start = time.monotonic()
            code, headers, answer = infer(keda, host, name)
            assert code == 200 and headers.get("x-keda-http-cold-start") == "false" and answer["outputs"], (code, headers)
            warm.append(time.monotonic() - start)
        warm_median = statistics.median(warm)
        rows = [("first request at zero replicas", first, f"(the interceptor's cold start header: {cold_start})"),
                ("  the Deployment scaled to 1 at", timeline.scaled, "(KEDA, woken by the add-on's scaler)"),
                ("  its pod ready at", timeline.ready, "(scheduled, started, model loaded, probe passed)"),
                (f"a request with the pod running (median of {WARM_REQUESTS})", warm_median, "")]
        for label, seconds, note in rows:
            print(f"{label:<52} {seconds if seconds is not None else float('nan'):>9.4f} s  {note}")
        print(f"{'ratio first / running':<52} {first / warm_median:>9.0f}x", flush=True)
        cp.kubectl("delete", "-n", namespace, "modelservice", name, "--wait=true", timeout=120)


PARTS: dict[str, Callable[[RealCluster], None]] = {"canary": canary_rollouts, "from-zero": from_zero}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=sorted(PARTS), action="append",
                        help="what to measure (repeatable); default: every part")
    parser.add_argument("--wait", type=float, default=600, help="seconds to wait for the real node's lock")
    args = parser.parse_args()
    with real_cluster(args.wait) as cluster:
        for part in args.part or list(PARTS):
            print(f"\n== {part}", flush=True)
            PARTS[part](cluster)


if __name__ == "__main__":
    main()
