"""CompressionJob scale: N CompressionJobs created at once on the local control plane, the operator as a process.

Measures, from the first create:
- the time until every CompressionJob has its Job,
- the time until every CompressionJob reports phase Running for its generation (kwok keeps the pods running),
- the operator's peak resident memory,
- the operator's status writes and reads per CompressionJob (the API server's own request counters),
and, after an operator restart with all N running, that the resume pass starts no second Job and rewrites no
status. Targets for N=300: Running within 60 s, peak RSS within 250 MB, at most 3 status writes each
(Pending, then Running: the Job's events can split the second), no duplicates after the restart.

N is 300 by default because every pod keeps running: the test cluster's cpu pool holds 3 x 110 pods.

    .venv/bin/python benchmarks/compression_job_scale.py            # 300 CompressionJobs
    .venv/bin/python benchmarks/compression_job_scale.py --jobs 100
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client  # noqa: E402

from benchmarks.operator_scale import RssSampler, wait_until  # noqa: E402
from tests.cluster.controlplane import OUTCOME_ANNOTATION, ControlPlane  # noqa: E402
from tests.operator.conftest import CRDS, OperatorProcess  # noqa: E402

GROUP, VERSION, PLURAL = "slimserve.io", "v1alpha1", "compressionjobs"
JOB_SELECTOR = "app.kubernetes.io/managed-by=slimserve-operator,app.kubernetes.io/component=compressor"
RUNNING_TARGET_S = 60.0
RSS_TARGET_MB = 250.0
STATUS_WRITES_TARGET = 3.0
_REQUESTS = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$')


def compression_job(index: int) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CompressionJob",
        "metadata": {
            "name": f"cj-{index:04d}",
            "annotations": {"slimserve.io/pod-annotations": json.dumps({OUTCOME_ANNOTATION: "run"})},
        },
        "spec": {
            "model": {"uri": "builtin://digits-cnn"},
            "steps": [{"quantize": {"method": "int8-dynamic"}}],
            "output": {"uri": f"s3://artifacts/cj-{index:04d}"},
        },
    }


def status_requests(cp: ControlPlane) -> dict[str, float]:
    """GET and PATCH requests on compressionjobs/status so far, from the API server's metrics."""
    counts = {"GET": 0.0, "PATCH": 0.0}
    for line in cp.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        match = _REQUESTS.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("resource") == PLURAL and labels.get("subresource") == "status" and labels.get("verb") in counts:
            counts[labels["verb"]] += float(match["value"])
    return counts


def count_jobs(batch: client.BatchV1Api, namespace: str) -> int:
    return len(batch.list_namespaced_job(namespace, label_selector=JOB_SELECTOR).items)


def count_running(custom: client.CustomObjectsApi, namespace: str) -> int:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    return sum(
        1
        for item in items
        if (item.get("status") or {}).get("phase") == "Running"
        and item["status"].get("observedGeneration") == item["metadata"]["generation"]
    )


def run(jobs: int, workers: int, timeout: float, settle: float) -> int:
    with ControlPlane.start() as cp:
        cp.kubectl("apply", "--server-side", "-f", str(CRDS))
        for path in sorted(CRDS.glob("*.yaml")):
            cp.kubectl("wait", "--for=condition=Established", "-f", str(path), "--timeout=60s")
        namespace = cp.create_namespace("cj-scale")
        operator = OperatorProcess(cp, Path(tempfile.mkdtemp(prefix="slimserve-cj-scale-"))).start()
        api = cp.api_client()
        custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
        try:
            before = status_requests(cp)
            with RssSampler(operator.process.pid) as rss:
                start = time.monotonic()
                deadline = start + timeout
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(lambda i: custom.create_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, compression_job(i)), range(jobs)))
                created_s = time.monotonic() - start
                wait_until("every Job", lambda: count_jobs(batch, namespace) >= jobs, deadline)
                jobs_s = time.monotonic() - start
                wait_until("every CompressionJob Running", lambda: count_running(custom, namespace) >= jobs, deadline)
                running_s = time.monotonic() - start
            after = status_requests(cp)
            writes = (after["PATCH"] - before["PATCH"]) / jobs
            reads = (after["GET"] - before["GET"]) / jobs

            operator.restart()
            with RssSampler(operator.process.pid) as restart_rss:
                time.sleep(settle)  # the resume pass and the Jobs' initial listing run now
            resumed = status_requests(cp)
            restart_writes = resumed["PATCH"] - after["PATCH"]
            duplicates = count_jobs(batch, namespace) - jobs
            still_running = count_running(custom, namespace)
        finally:
            operator.stop()
            api.close()

    print(f"\nCompressionJobs: {jobs} (created by {workers} client threads in {created_s:.1f} s)\n")
    print(f"{'measure':<56}{'value':>10}{'target':>10}")
    rows = [
        ("time until every Job exists (s)", f"{jobs_s:.1f}", ""),
        ("time until every CompressionJob is Running (s)", f"{running_s:.1f}", f"<= {RUNNING_TARGET_S:.0f}"),
        ("operator peak RSS (MB)", f"{rss.peak:.0f}", f"<= {RSS_TARGET_MB:.0f}"),
        ("status writes per CompressionJob", f"{writes:.2f}", f"<= {STATUS_WRITES_TARGET:.0f}"),
        ("status reads per CompressionJob", f"{reads:.2f}", ""),
        (f"restart: status writes in {settle:.0f} s", f"{restart_writes:.0f}", "0"),
        ("restart: operator peak RSS (MB)", f"{restart_rss.peak:.0f}", f"<= {RSS_TARGET_MB:.0f}"),
        ("restart: duplicate Jobs", str(duplicates), "0"),
        ("restart: CompressionJobs still Running", str(still_running), str(jobs)),
    ]
    for name, value, target in rows:
        print(f"{name:<56}{value:>10}{target:>10}")
    met = (
        running_s <= RUNNING_TARGET_S
        and max(rss.peak, restart_rss.peak) <= RSS_TARGET_MB
        and writes <= STATUS_WRITES_TARGET
        and restart_writes == 0
        and duplicates == 0
        and still_running == jobs
    )
    print(f"\ntargets {'met' if met else 'MISSED'}")
    return 0 if met else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="CompressionJobs to create (default 300)")
    parser.add_argument("--workers", type=int, default=8, help="client threads creating them (default 8)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds per phase")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to watch the restarted operator")
    args = parser.parse_args(argv)
    return run(args.jobs, args.workers, args.timeout, args.settle)


if __name__ == "__main__":
    sys.exit(main())
