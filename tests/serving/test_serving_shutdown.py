"""SIGTERM: report not ready, stop accepting, finish every request already in flight, exit 0."""

from __future__ import annotations

import json
import socket
import threading
import time

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving_helpers import HOST, ServerProcess, free_port, metric_samples, post_json, request, send_together

LONG_TEXT = " ".join(["serving models under load needs a graceful shutdown"] * 30)


def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_requests_in_flight_at_sigterm_all_complete_and_the_process_exits_0(server_logs):
    server = ServerProcess("builtin://minilm-l6", server_logs, "--max-batch-size", "8", "--drain-timeout-s", "60").start()
    try:
        texts = {"name": "text", "shape": [8], "datatype": "BYTES", "data": [LONG_TEXT] * 8}
        burst = [("/v2/models/minilm-l6/infer", json.dumps({"id": str(i), "inputs": [texts]}).encode()) for i in range(6)]
        answers: list = []
        sender = threading.Thread(target=lambda: answers.extend(send_together(server.http_url, burst, timeout=120)))
        sender.start()
        wait_until(lambda: metric_samples(server.http_url)["slimserve_inflight_requests"] >= 4)

        server.terminate()
        wait_until(lambda: _refused(server.http_port))  # stops accepting while it drains
        sender.join(120)
        assert server.wait(60) == 0
    finally:
        server.kill()
    assert [status for status, _ in answers] == [200] * len(burst)
    for index, (_status, answer) in enumerate(answers):
        document = json.loads(answer)
        assert document["id"] == str(index) and document["outputs"][0]["shape"] == [8, 384]
    assert "draining" in server.log()


def _refused(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return True
    return False


def test_during_the_shutdown_delay_it_reports_not_ready_but_still_serves(server_logs):
    metrics_port = free_port()
    server = ServerProcess(
        "builtin://digits-mlp", server_logs, "--shutdown-delay-s", "3", "--metrics-port", str(metrics_port)
    ).start()
    try:
        status, _headers, body = request(f"{HOST}:{metrics_port}", "GET", "/metrics")  # the separate metrics port
        assert status == 200 and b"slimserve_inflight_requests 0.0" in body
        server.terminate()
        wait_until(lambda: request(server.http_url, "GET", "/v2/health/ready")[0] == 400)
        status, _headers, body = request(server.http_url, "GET", "/v2/health/ready")
        assert json.loads(body) == {"ready": False}
        assert request(server.http_url, "GET", "/v2/health/live")[0] == 200
        assert request(server.http_url, "GET", "/v2/models/digits-mlp/ready")[0] == 400
        with grpc.insecure_channel(server.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready is False
            assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live is True
        infer = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
        assert post_json(server.http_url, "/v2/models/digits-mlp/infer", infer)[0] == 200
        assert server.wait(60) == 0
    finally:
        server.kill()


def test_grpc_calls_after_shutdown_are_unavailable(server_logs):
    server = ServerProcess("builtin://digits-mlp", server_logs).start()
    channel = grpc.insecure_channel(server.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready is True
        assert server.stop() == 0
        with pytest.raises(grpc.RpcError) as raised:
            stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        channel.close()
        server.kill()
