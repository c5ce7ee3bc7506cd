"""A real Prometheus (built by tests/prometheus/build.sh), scraping targets the test names, with the labels
Kubernetes pod discovery would give them (`static_targets`), or the pods that discovery finds (`pod_discovery`)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.serving.serving_helpers import HOST, answers_ok_within, free_port, stop_process

BUILD_SCRIPT = Path(__file__).resolve().parent / "build.sh"
SCRAPE_INTERVAL_S = 1


def static_targets(targets: list[tuple[str, dict[str, str]]]) -> dict:
    """A scrape config of `targets`: (address, labels) pairs."""
    return {"static_configs": [{"targets": [address], "labels": labels} for address, labels in targets]}


def pod_discovery(kubeconfig: Path, namespace: str) -> dict:
    """A scrape config of the pods in `namespace` that ask to be scraped, found through the API server of
    `kubeconfig` (whose user may list and watch them), as a cluster's Prometheus scrapes the ModelService's pods:
    their `prometheus.io/*` annotations choose the port, path and scheme, and each series is labelled with the
    pod's namespace and name (what the operator's KEDA query selects on)."""
    meta = "__meta_kubernetes_pod_annotation_prometheus_io_"
    return {
        "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig),
                                   "namespaces": {"names": [namespace]}}],
        "relabel_configs": [
            {"source_labels": [f"{meta}scrape"], "regex": "true", "action": "keep"},
            {"source_labels": [f"{meta}path"], "regex": "(.+)", "target_label": "__metrics_path__"},
            {"source_labels": [f"{meta}scheme"], "regex": "(https?)", "target_label": "__scheme__"},
            # One target per pod: the discovered address of each container port, moved to the annotation's port.
            {"source_labels": ["__address__", f"{meta}port"], "regex": r"([^:]+)(?::\d+)?;(\d+)",
             "replacement": "$1:$2", "target_label": "__address__"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    }


class Prometheus:
    def __init__(self, binary: Path, work: Path, scrape_config: dict, host: str = HOST) -> None:
        self.address = f"{host}:{free_port()}"
        config = work / "prometheus.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "scrape_timeout": f"{SCRAPE_INTERVAL_S}s"},
            "scrape_configs": [{"job_name": "slimserve-pods", "metrics_path": "/metrics", **scrape_config}],
        }))
        self.log_path = work / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(binary), f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
                 f"--web.listen-address={self.address}"],
                stdout=log, stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout_s: float = 60) -> None:
        if not answers_ok_within(f"http://{self.address}/-/ready", self.process, timeout_s):
            raise RuntimeError(f"prometheus did not start:\n{self.log_path.read_text(errors='replace')}")

    def query(self, promql: str) -> list[dict]:
        """The instant vector `promql` evaluates to now, as KEDA's Prometheus scaler asks for it; a query
        Prometheus refuses raises with its error."""
        url = f"http://{self.address}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                document = json.load(answer)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"prometheus refused {promql!r}: {error.read().decode(errors='replace')}") from None
        assert document["status"] == "success", document
        return document["data"]["result"]

    def wait_for(self, promql: str, accept: Callable[[list[dict]], bool], timeout_s: float = 30) -> list[dict]:
        """Polls `promql` until `accept(result)` (scrapes land every SCRAPE_INTERVAL_S); returns the last result."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(promql)
            if accept(result) or time.monotonic() > deadline:
                return result
            time.sleep(SCRAPE_INTERVAL_S / 4)

    def stop(self) -> None:
        stop_process(self.process)


def built_binary() -> Path:
    """The Prometheus binary, built first when missing."""
    subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, timeout=3600)
    printed = subprocess.run(["bash", str(BUILD_SCRIPT), "--print-bin"], check=True, capture_output=True, text=True)
    return Path(printed.stdout.strip())
