"""The KEDA trigger's query (`inflight_query`) against a real Prometheus scraping a real server: for
ModelService names with `-` and `.`, it returns exactly the requests the server holds in flight, and
no series of another service or namespace."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from slimserve.controller.builders.model_service import Owner, inflight_query
from tests.prometheus.gated_server import INPUT, MODEL_NAME
from tests.serving.serving_helpers import HOST, free_port, metric_samples, post_json, request

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "team-a"
NAMES = ("my-model", "model.v1", "my-model.v1.2")
HELD = 3  # requests held in flight


def _owner(name: str) -> Owner:
    return Owner(name=name, namespace=NAMESPACE, uid="uid")


def _pod(name: str) -> str:
    """A pod of the ModelService `name`: its Deployment's name, a ReplicaSet hash and a pod suffix."""
    return f"{_owner(name).child_name}-7d9c5b8f4-x2k9p"


def _series_labels() -> list[dict[str, str]]:
    """A pod of every service, and pods of none: in another namespace, with a longer name sharing the prefix,
    and with every `.` and `-` of the name replaced (what a regex metacharacter left unquoted would match)."""
    pods = [{"namespace": NAMESPACE, "pod": _pod(name)} for name in NAMES]
    decoys = [{"namespace": "team-b", "pod": _pod(NAMES[0])}]
    for name in NAMES:
        child = _owner(name).child_name
        decoys.append({"namespace": NAMESPACE, "pod": f"{child}-canary-7d9c5b8f4-x2k9p"})
        decoys.append({"namespace": NAMESPACE, "pod": f"{re.sub(r'[.-]', 'x', child)}-7d9c5b8f4-x2k9p"})
    return pods + decoys


@pytest.mark.parametrize("name", NAMES)
def test_the_pod_pattern_is_a_valid_promql_string_of_an_re2_literal(name):
    query = inflight_query(_owner(name))
    quoted = re.search(r'pod=~("(?:[^"\\]|\\.)*")', query).group(1)
    pattern = json.loads(quoted)  # PromQL reads this string as Go and JSON do
    assert re.fullmatch(pattern, _pod(name))
    for decoy in _series_labels():
        if decoy["pod"] != _pod(name):
            assert not re.fullmatch(pattern, decoy["pod"]), decoy


@pytest.fixture
def gated_server(tmp_path):
    """The inference server over a model that answers only once `hold` is gone."""
    hold = tmp_path / "hold"
    http_port, grpc_port = free_port(), free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.prometheus.gated_server", str(hold), str(http_port), str(grpc_port)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
    address = f"{HOST}:{http_port}"
    try:
        _wait_ready(process, address, log_path)
        yield address, hold
    finally:
        hold.unlink(missing_ok=True)
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _wait_ready(process: subprocess.Popen, address: str, log_path: Path) -> None:
    def ready() -> bool:
        try:
            return request(address, "GET", "/v2/health/ready", timeout=2)[0] == 200
        except OSError:
            return False

    if not _wait_until(lambda: process.poll() is not None or ready(), timeout_s=120) or process.poll() is not None:
        raise RuntimeError(f"server not ready:\n{log_path.read_text(errors='replace')}")


def _value(result: list[dict]) -> float | None:
    """The one sample of a `sum(...)` result, as KEDA reads it."""
    return float(result[0]["value"][1]) if len(result) == 1 else None


def test_the_keda_query_returns_the_requests_in_flight_for_names_with_dashes_and_dots(gated_server, start_prometheus):
    address, hold = gated_server
    series = _series_labels()
    prometheus = start_prometheus([(address, labels) for labels in series])
    queries = {name: inflight_query(_owner(name)) for name in NAMES}
    every_series = prometheus.wait_for("count(slimserve_inflight_requests)", lambda r: _value(r) == len(series))
    assert _value(every_series) == len(series)  # all scraped, decoys included
    for name, query in queries.items():
        assert _value(prometheus.query(query)) == 0, name

    hold.touch()
    answers: list[int] = []
    row = {"inputs": [{"name": INPUT.name, "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    clients = [threading.Thread(target=lambda: answers.append(post_json(address, f"/v2/models/{MODEL_NAME}/infer", row, 120)[0]))
               for _ in range(HELD)]
    for client in clients:
        client.start()
    try:
        held = _wait_until(lambda: metric_samples(address)["slimserve_inflight_requests"] == HELD)
        assert held, metric_samples(address)
        for name, query in queries.items():
            result = prometheus.wait_for(query, lambda r: _value(r) == HELD)
            assert _value(result) == HELD, (name, query, result)
    finally:
        hold.unlink()
        for client in clients:
            client.join(120)
    assert answers == [200] * HELD
    for name, query in queries.items():
        assert _value(prometheus.wait_for(query, lambda r: _value(r) == 0)) == 0, name


def _wait_until(condition, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
