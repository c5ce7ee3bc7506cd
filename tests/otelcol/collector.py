"""A real OpenTelemetry Collector (built by tests/otelcol/build.sh) on loopback: OTLP/gRPC in, OTLP JSON lines
out to a file the tests read spans from."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.serving.serving_helpers import HOST, free_port, stop_process

BUILD_SCRIPT = Path(__file__).resolve().parent / "build.sh"


class Collector:
    def __init__(self, binary: Path, work: Path) -> None:
        self.port = free_port()
        self.spans_path = work / "spans.jsonl"
        config = work / "otelcol.yaml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"{HOST}:{self.port}"}}}},
            "exporters": {"file": {"path": str(self.spans_path), "flush_interval": "100ms"}},
            "service": {
                "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}},
                "telemetry": {"metrics": {"level": "none"}},  # no metrics port: parallel runs share the host
            },
        }))
        self.log_path = work / "otelcol.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([str(binary), f"--config=file:{config}"], stdout=log, stderr=subprocess.STDOUT)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"otelcol did not start:\n{self.log_path.read_text(errors='replace')}")

    def spans(self) -> list[dict]:
        """Every span received so far, each with its resource's attributes under "resource"."""
        if not self.spans_path.exists():
            return []
        spans = []
        for line in self.spans_path.read_text().splitlines():
            if not line.strip():
                continue
            for resource_spans in json.loads(line).get("resourceSpans", []):
                resource = {a["key"]: a["value"] for a in resource_spans.get("resource", {}).get("attributes", [])}
                for scope_spans in resource_spans.get("scopeSpans", []):
                    spans += [{**span, "resource": resource} for span in scope_spans.get("spans", [])]
        return spans

    def wait_for_spans(self, accept: Callable[[list[dict]], bool], timeout_s: float = 30) -> list[dict]:
        """Polls the received spans until `accept(spans)`; returns the last reading."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans()
            if accept(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture(scope="session")
def otel_collector(tmp_path_factory) -> Iterator[Collector]:
    """A running collector (built on first use), shared by the session's tests; tell their spans apart by trace id."""
    subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, timeout=3600)
    printed = subprocess.run(["bash", str(BUILD_SCRIPT), "--print-bin"], check=True, capture_output=True, text=True)
    collector = Collector(Path(printed.stdout.strip()), tmp_path_factory.mktemp("otelcol"))
    try:
        collector.wait_ready()
        yield collector
    finally:
        collector.stop()
