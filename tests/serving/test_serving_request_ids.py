"""Request ids and the access log on a real `slimserve serve` process, for REST, gRPC and gRPC-Web: a
client's `X-Request-Id` comes back and names the request's one access-log line; a missing or hostile one is
replaced by a fresh id, and never reaches the log as it was sent."""

from __future__ import annotations

import json
import re
import socket
import time

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving_helpers import ServerProcess, request
from tests.web.grpc_web_helpers import BINARY, call, frame

MODEL = "digits-mlp"
INFER = f"/v2/models/{MODEL}/infer"
PIXELS = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 64)
GENERATED = re.compile(r"[0-9a-f]{32}")  # uuid4 hex
HUGE_ID = "A" * 10240


@pytest.fixture(scope="module")
def server(server_logs):
    server = ServerProcess(f"builtin://{MODEL}", server_logs, "--access-log", "--grpc-web").start()
    try:
        yield server
    finally:
        server.stop()


def access_lines(server: ServerProcess) -> list[dict]:
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "slimserve.access"]


def access_line(server: ServerProcess, request_id: str, timeout_s: float = 10) -> dict:
    """The access line of `request_id`, once the log's writer thread has written it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [line for line in access_lines(server) if line["request_id"] == request_id]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no access line for {request_id!r}:\n{server.log()[-3000:]}")


def rest_infer(server: ServerProcess, headers: dict[str, str] | None = None, model: str = MODEL):
    document = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": PIXELS.ravel().tolist()}]}
    return request(server.http_url, "POST", f"/v2/models/{model}/infer", json.dumps(document).encode(),
                   {"Content-Type": "application/json", **(headers or {})})


def grpc_request(model: str = MODEL) -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name=model)
    message.inputs.add(name="input", datatype="FP32", shape=list(PIXELS.shape))
    message.raw_input_contents.append(PIXELS.tobytes())
    return message


def raw_http(server: ServerProcess, head: bytes) -> bytes:
    """One request written byte for byte (http.client refuses what a hostile client would send)."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_rest_returns_and_logs_the_clients_id_once(server):
    status, headers, _body = rest_infer(server, {"X-Request-Id": "rest-call-1"})
    assert status == 200
    assert headers["x-request-id"] == "rest-call-1"
    line = access_line(server, "rest-call-1")
    assert line["model"] == MODEL and line["protocol"] == "rest" and line["status"] == 200
    assert line["batch_size"] >= 1 and line["latency_ms"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    # A later request's line is written after it: by then a second line of the first would be there too.
    request(server.http_url, "GET", "/v2/health/live", headers={"X-Request-Id": "rest-call-2"})
    access_line(server, "rest-call-2")
    assert [line["request_id"] for line in access_lines(server)].count("rest-call-1") == 1
    assert "uvicorn.access" not in server.log()


def test_rest_errors_and_unrouted_paths_get_an_id_and_a_line(server):
    status, headers, _body = rest_infer(server, model="no-such-model")
    assert status == 404
    assert GENERATED.fullmatch(headers["x-request-id"])
    line = access_line(server, headers["x-request-id"])
    assert (line["model"], line["status"], line["batch_size"]) == ("no-such-model", 404, None)
    status, headers, _body = request(server.http_url, "GET", "/nowhere")
    assert status == 404
    assert access_line(server, headers["x-request-id"])["status"] == 404


def test_rest_replaces_a_hostile_id_and_never_logs_it(server):
    status, headers, _body = rest_infer(server, {"X-Request-Id": HUGE_ID})
    assert status == 200
    assert GENERATED.fullmatch(headers["x-request-id"])
    access_line(server, headers["x-request-id"])
    spaced = "two words"
    status, headers, _body = rest_infer(server, {"X-Request-Id": spaced})
    assert GENERATED.fullmatch(headers["x-request-id"])
    access_line(server, headers["x-request-id"])
    # Line breaks never get as far as the app: the HTTP parser refuses the request.
    answer = raw_http(server, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Request-Id: evil\nInjected: yes\r\n"
                              b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    log = server.log()
    assert HUGE_ID[:200] not in log and spaced not in log and "Injected" not in log


def test_grpc_sends_the_id_back_in_metadata_and_logs_it(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        _response, outcome = stub.ModelInfer.with_call(grpc_request(), metadata=(("x-request-id", "grpc-call-1"),),
                                                        timeout=10)
        assert ("x-request-id", "grpc-call-1") in outcome.initial_metadata()
        assert ("x-request-id", "grpc-call-1") in outcome.trailing_metadata()
        line = access_line(server, "grpc-call-1")
        assert (line["model"], line["protocol"], line["status"]) == (MODEL, "grpc", 0)
        assert line["batch_size"] >= 1

        with pytest.raises(grpc.RpcError) as failed:
            stub.ModelInfer(grpc_request("no-such-model"), metadata=(("x-request-id", "grpc-call-2"),), timeout=10)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert ("x-request-id", "grpc-call-2") in failed.value.trailing_metadata()
        line = access_line(server, "grpc-call-2")
        assert (line["model"], line["status"]) == ("no-such-model", grpc.StatusCode.NOT_FOUND.value[0])


def test_grpc_replaces_a_missing_or_hostile_id(server):
    hostile = "x" * 7000 + " spaced"  # under gRPC's own 8 KiB metadata limit, above ours
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for metadata in ((), (("x-request-id", hostile),)):
            _response, outcome = stub.ModelInfer.with_call(grpc_request(), metadata=metadata, timeout=10)
            (sent_back,) = [value for key, value in outcome.trailing_metadata() if key == "x-request-id"]
            assert GENERATED.fullmatch(sent_back)
            assert access_line(server, sent_back)["protocol"] == "grpc"
    assert "x" * 200 not in server.log()


def test_grpc_web_returns_the_id_in_a_header_and_logs_it(server):
    body = frame(grpc_request().SerializeToString())
    answer = call(server.http_url, "ModelInfer", body, BINARY, headers={"X-Request-Id": "web-call-1"})
    assert answer.status == 0
    assert answer.headers["x-request-id"] == "web-call-1"
    line = access_line(server, "web-call-1")
    assert (line["model"], line["protocol"], line["status"]) == (MODEL, "grpc-web", 0)
    assert line["batch_size"] >= 1

    answer = call(server.http_url, "ModelInfer", frame(grpc_request("no-such-model").SerializeToString()), BINARY,
                  headers={"X-Request-Id": HUGE_ID})
    assert answer.status == grpc.StatusCode.NOT_FOUND.value[0]
    assert GENERATED.fullmatch(answer.headers["x-request-id"])
    assert access_line(server, answer.headers["x-request-id"])["protocol"] == "grpc-web"
    assert HUGE_ID[:200] not in server.log()
