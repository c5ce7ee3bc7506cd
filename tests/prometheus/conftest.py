"""A real Prometheus (built by tests/prometheus/build.sh) on loopback, scraping targets the test names, with
the labels Kubernetes pod discovery would give them."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.serving.serving_helpers import HOST, answers_ok_within, free_port, stop_process

BUILD_SCRIPT = Path(__file__).resolve().parent / "build.sh"
SCRAPE_INTERVAL_S = 1


class Prometheus:
    def __init__(self, binary: Path, work: Path, targets: list[tuple[str, dict[str, str]]]) -> None:
        self.address = f"{HOST}:{free_port()}"
        config = work / "prometheus.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "scrape_timeout": f"{SCRAPE_INTERVAL_S}s"},
            "scrape_configs": [{
                "job_name": "slimserve-pods",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [address], "labels": labels} for address, labels in targets],
            }],
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


@pytest.fixture(scope="session")
def prometheus_binary() -> Path:
    subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, timeout=3600)
    printed = subprocess.run(["bash", str(BUILD_SCRIPT), "--print-bin"], check=True, capture_output=True, text=True)
    return Path(printed.stdout.strip())


@pytest.fixture
def start_prometheus(prometheus_binary, tmp_path) -> Iterator[Callable[[list[tuple[str, dict[str, str]]]], Prometheus]]:
    """start_prometheus([(address, labels), ...]) -> a ready Prometheus scraping those targets every second."""
    started: list[Prometheus] = []

    def start(targets: list[tuple[str, dict[str, str]]]) -> Prometheus:
        work = tmp_path / f"prometheus-{len(started)}"
        work.mkdir()
        prometheus = Prometheus(prometheus_binary, work, targets)
        started.append(prometheus)
        prometheus.wait_ready()
        return prometheus

    yield start
    for prometheus in started:
        prometheus.stop()
