"""`grpc.health.v1.Health` on a real `slimserve serve` process, across its whole life: NOT_SERVING while the
model loads, SERVING once it is ready, NOT_SERVING as soon as SIGTERM starts the drain, with the port still open.

The load is held at a known point: the artifact comes from the real MinIO server through a proxy that keeps
every connection waiting until the test lets it through.
"""

from __future__ import annotations

import importlib.util
import queue
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving_helpers import HOST, ServerProcess

# The MinIO fixture of the storage tests, loaded under a name of its own (a plain `conftest` import would
# find whichever conftest.py pytest loaded last).
_STORAGE = Path(__file__).resolve().parent.parent / "storage" / "conftest.py"
_spec = importlib.util.spec_from_file_location("storage_fixtures", _STORAGE)
storage_fixtures = sys.modules.setdefault("storage_fixtures", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(storage_fixtures)
s3_server = storage_fixtures.s3_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = ("", "inference.GRPCInferenceService")


class GatedProxy:
    """A TCP proxy to `target` that holds every connection until `open()`; `reached` is set by the first one."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.reached = threading.Event()
        self._open = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def open(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._open.set()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        self.reached.set()
        self._open.wait()
        upstream = socket.create_connection(self.target)
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _upload(s3_server, directory: Path, prefix: str) -> str:
    client = s3_server.client()
    for path in directory.iterdir():
        client.upload_file(str(path), s3_server.bucket, f"{prefix}/{path.name}")
    return f"s3://{s3_server.bucket}/{prefix}"


def _check(stub, service: str) -> int:
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _wait_for_port(channel: grpc.Channel) -> None:
    grpc.channel_ready_future(channel).result(timeout=60)


def _watch(stub, service: str) -> tuple[queue.Queue, threading.Thread]:
    """Every status a Watch stream sends, then "ended" (or the error code) when the stream closes."""
    updates: queue.Queue = queue.Queue()

    def read() -> None:
        try:
            for response in stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=120):
                updates.put(response.status)
            updates.put("ended")
        except grpc.RpcError as error:
            updates.put(error.code())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return updates, thread


def test_health_follows_loading_readiness_and_the_drain(server_logs, cnn_artifact, s3_server, tmp_path):
    uri = _upload(s3_server, Path(urlparse(cnn_artifact).path), "health/digits-cnn")
    endpoint = urlparse(s3_server.endpoint)
    proxy = GatedProxy((endpoint.hostname, endpoint.port))
    server = ServerProcess(
        uri, server_logs, "--shutdown-delay-s", "3", "--drain-timeout-s", "20",
        env={"AWS_ENDPOINT_URL": f"http://{HOST}:{proxy.port}", "AWS_ACCESS_KEY_ID": storage_fixtures.ACCESS_KEY,
             "AWS_SECRET_ACCESS_KEY": storage_fixtures.SECRET_KEY, "SLIMSERVE_CACHE": str(tmp_path / "cache")},
    )
    started: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: started.put(_outcome(server.start)), daemon=True).start()
    channel = grpc.insecure_channel(server.grpc_url)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        assert proxy.reached.wait(60), server.log()  # the server is downloading its model: not ready yet
        _wait_for_port(channel)
        assert [_check(stub, service) for service in SERVICES] == [NOT_SERVING, NOT_SERVING]
        with pytest.raises(grpc.RpcError) as unknown:
            _check(stub, "no.such.Service")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        updates, watcher = _watch(stub, "")
        assert updates.get(timeout=10) == NOT_SERVING

        proxy.open()
        assert started.get(timeout=120) is None, server.log()
        assert updates.get(timeout=10) == SERVING
        assert [_check(stub, service) for service in SERVICES] == [SERVING, SERVING]

        server.terminate()
        assert updates.get(timeout=10) == NOT_SERVING
        # The drain's status is on the port while it still answers (the shutdown delay keeps it open).
        assert [_check(stub, service) for service in SERVICES] == [NOT_SERVING, NOT_SERVING]
        assert server.process.poll() is None
        # ... and the Watch stream ends with it, so it does not hold the stop for the drain timeout.
        assert updates.get(timeout=10) == "ended"
        began = time.monotonic()
        assert server.wait(15) == 0
        assert time.monotonic() - began < 10, server.log()
    finally:
        channel.close()
        server.kill()
        proxy.close()


def _outcome(call) -> BaseException | None:
    try:
        call()
    except BaseException as error:  # noqa: BLE001 - reported to the test's thread
        return error
    return None


def test_a_watch_that_ends_leaves_the_other_watches_of_its_service_informed(server_logs):
    server = ServerProcess("builtin://digits-mlp", server_logs, "--shutdown-delay-s", "3").start()
    leaving, staying = grpc.insecure_channel(server.grpc_url), grpc.insecure_channel(server.grpc_url)
    try:
        first = health_pb2_grpc.HealthStub(leaving).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        assert next(first).status == SERVING
        updates, _watcher = _watch(health_pb2_grpc.HealthStub(staying), "")
        assert updates.get(timeout=10) == SERVING
        first.cancel()
        with pytest.raises(grpc.RpcError):
            next(first)
        # A round trip after the cancel, for the server to end the first stream before the drain.
        assert _check(health_pb2_grpc.HealthStub(staying), "") == SERVING
        server.terminate()
        assert updates.get(timeout=10) == NOT_SERVING
        assert updates.get(timeout=10) == "ended"
        assert server.wait(15) == 0
    finally:
        leaving.close()
        staying.close()
        server.kill()
