"""Stalled clients cost their own connection only: they are not in flight, hold back no batch, and are
closed after the server's header and body timeouts. Real `slimserve serve` process, raw sockets."""

from __future__ import annotations

import json
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving_helpers import HOST, ServerProcess, metric_samples, post_json
from tests.web.grpc_web_helpers import unary

MAX_LATENCY_MS = 2000  # what a batch held open for a stalled client would make everyone wait
HEADER_TIMEOUT_S = 4.0
BODY_TIMEOUT_S = 5.0
MODEL = "digits"
INFER = f"/v2/models/{MODEL}/infer"
PIXELS = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 64)
# Far below the batch window, far above a digits CNN request on a busy 2-core machine.
FAST_ENOUGH_S = MAX_LATENCY_MS / 1000 / 2


@pytest.fixture(scope="module")
def stall_server(server_logs):
    # The digits CNN is slow enough per row to be batched (trivially fast models skip the queue).
    server = ServerProcess(
        "builtin://digits-cnn", server_logs, "--model-name", MODEL, "--max-latency-ms", str(MAX_LATENCY_MS),
        "--header-timeout-s", str(HEADER_TIMEOUT_S), "--body-timeout-s", str(BODY_TIMEOUT_S), "--grpc-web",
    ).start()
    try:
        yield server
    finally:
        server.stop()


def _connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection((HOST, server.http_port), timeout=30)


def _stall_in_body(server: ServerProcess, path: str, content_type: str, sent_body: bytes = b"") -> socket.socket:
    """Headers promising 1000 bytes, then `sent_body` (less than that) and silence. Returns once the server's
    handler asks for the body (its `100 Continue`): the request has reached the app and waits there."""
    sock = _connect(server)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {server.http_url}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
    sock.sendall(sent_body)
    return sock


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


def _read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_one_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length, read whole; the connection stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def _rest_document() -> dict:
    return {"inputs": [{"name": "input", "shape": list(PIXELS.shape), "datatype": "FP32", "data": PIXELS.ravel().tolist()}]}


def _grpc_request() -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name=MODEL)
    message.inputs.add(name="input", datatype="FP32", shape=list(PIXELS.shape))
    message.raw_input_contents.append(PIXELS.tobytes())
    return message


class _StalledGrpcCall:
    """A ModelInfer call whose headers went out and whose message never follows (a client stream left open)."""

    def __init__(self, server: ServerProcess) -> None:
        self._release = threading.Event()
        self.channel = grpc.insecure_channel(server.grpc_url)
        call = self.channel.stream_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        self.future = call.future(self._messages(), timeout=120)

    def _messages(self):
        self._release.wait()
        return
        yield  # a generator that sends nothing

    def close(self) -> None:
        self.future.cancel()
        self._release.set()
        self.channel.close()


def test_stalled_clients_are_not_in_flight_and_hold_back_no_batch(stall_server):
    nothing_sent = _connect(stall_server)
    half_headers = _connect(stall_server)
    half_headers.sendall(f"POST {INFER} HTTP/1.1\r\nHost: {stall_server.http_url}\r\nContent-Le".encode())
    body_stalls = [
        _stall_in_body(stall_server, INFER, "application/json"),
        _stall_in_body(stall_server, INFER, "application/json"),
        _stall_in_body(stall_server, INFER, "application/json", b'{"inputs": [{"name": "input", '),
        _stall_in_body(stall_server, "/inference.GRPCInferenceService/ModelInfer", "application/grpc-web+proto",
                       b"\x00\x00\x00\x03\xe3"),
    ]
    stalled_grpc = _StalledGrpcCall(stall_server)
    header_stalls = [nothing_sent, half_headers]
    try:
        assert metric_samples(stall_server.http_url)["slimserve_inflight_requests"] == 0

        latencies = {}
        with grpc.insecure_channel(stall_server.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for round_ in range(3):
                start = time.monotonic()
                status, answer = post_json(stall_server.http_url, INFER, _rest_document())
                latencies[f"rest-{round_}"] = time.monotonic() - start
                assert status == 200, answer

                start = time.monotonic()
                reply = stub.ModelInfer(_grpc_request(), timeout=30)
                latencies[f"grpc-{round_}"] = time.monotonic() - start
                assert reply.outputs[0].shape == [1, 10]

                start = time.monotonic()
                web, decoded = unary(stall_server.http_url, "ModelInfer", _grpc_request(), service_pb2.ModelInferResponse)
                latencies[f"grpc-web-{round_}"] = time.monotonic() - start
                assert web.status == 0 and decoded.outputs[0].shape == [1, 10], web.message
        assert max(latencies.values()) < FAST_ENOUGH_S, latencies

        # All of that happened with every stalled client still connected...
        assert all(_still_open(sock) for sock in header_stalls + body_stalls)
        assert not stalled_grpc.future.done()
        assert metric_samples(stall_server.http_url)["slimserve_inflight_requests"] == 0

        # ...which the server then closes: header stalls without a word, body stalls with a 408.
        for sock in header_stalls:
            assert _read_until_closed(sock) == b""
        for sock in body_stalls:
            answer = _read_until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert "not received within" in json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    finally:
        stalled_grpc.close()
        for sock in header_stalls + body_stalls:
            sock.close()
    status, _answer = post_json(stall_server.http_url, INFER, _rest_document())
    assert status == 200


def test_a_dripping_body_and_a_stall_after_a_kept_alive_request_are_cut_off(stall_server):
    document = json.dumps(_rest_document()).encode()
    kept_alive = _connect(stall_server)
    kept_alive.sendall(
        f"POST {INFER} HTTP/1.1\r\nHost: {stall_server.http_url}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(document)}\r\n\r\n".encode() + document
    )
    assert _read_one_response(kept_alive).startswith(b"HTTP/1.1 200 ")
    kept_alive.sendall(f"POST {INFER} HTTP/1.1\r\nHost: ".encode())  # the next request's headers, half of them

    # A body sent one byte at a time never completes: the deadline counts from the headers, not per byte.
    # Timed from before the headers go: the server's deadline starts when they arrive, earlier than the
    # `100 Continue` that _stall_in_body waits for comes back.
    headers_sent = time.monotonic()
    dripping = _stall_in_body(stall_server, INFER, "application/json")
    dripping.settimeout(0.25)
    answer = b""
    try:
        while not answer and time.monotonic() - headers_sent < BODY_TIMEOUT_S + 20:
            dripping.sendall(b" ")
            try:
                answer = dripping.recv(4096)
            except TimeoutError:
                pass
    except (BrokenPipeError, ConnectionResetError):
        pass
    dripping.settimeout(30)
    answer += _read_until_closed(dripping)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert time.monotonic() - headers_sent >= BODY_TIMEOUT_S
    assert _read_until_closed(kept_alive) == b""
    for sock in (kept_alive, dripping):
        sock.close()
