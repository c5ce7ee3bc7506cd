"""A real `slimserve serve` process on free loopback ports, and small HTTP helpers for the tests."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.ports import free_port  # noqa: F401  (the tests import it from here)

HOST = "127.0.0.1"
# The error battery's server runs with this batch limit and body size (tests import them from here: every
# test folder has a conftest.py, so `from conftest import` finds whichever one pytest loaded last).
ERROR_SERVER_MAX_BATCH = 8
ERROR_SERVER_MAX_BODY = 64 * 1024


def answers_ok_within(url: str, process: subprocess.Popen, timeout_s: float) -> bool:
    """Whether GET `url` answers 200 within `timeout_s`; False as soon as `process` (the server) has exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


class ServerProcess:
    """`slimserve serve` as a subprocess; `start()` returns once /v2/health/ready answers 200."""

    def __init__(self, artifact: str, log_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.artifact = artifact
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.args = args
        self.env = env or {}
        self.log_path = log_dir / f"serve-{self.http_port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def ready_url(self) -> str:
        """What `start()` waits for (a server whose HTTP port needs a client certificate has a plain probe port)."""
        return f"http://{self.http_url}/v2/health/ready"

    def start(self, timeout_s: float = 120.0) -> "ServerProcess":
        command = [
            sys.executable, "-m", "slimserve.cli.main", "serve", "--artifact", self.artifact, "--host", HOST,
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port), "--torch-threads", "1",
            *self.args,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        if answers_ok_within(self.ready_url, self.process, timeout_s):
            return self
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
        self.kill()
        raise RuntimeError(f"server not ready after {timeout_s}s:\n{self.log()}")

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.terminate()
        try:
            return self.wait(60)
        finally:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def compress(spec: Path) -> None:
    """`slimserve compress --spec SPEC` as a subprocess, as a compression pod runs it; asserts it succeeded."""
    done = subprocess.run(
        [sys.executable, "-m", "slimserve.cli.main", "compress", "--spec", str(spec), "--progress", "json"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def request(
    address: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30
) -> tuple[int, dict[str, str], bytes]:
    host, port = address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def post_json(address: str, path: str, document: object, timeout: float = 30) -> tuple[int, dict]:
    status, _headers, body = request(
        address, "POST", path, json.dumps(document).encode(), {"Content-Type": "application/json"}, timeout
    )
    return status, json.loads(body)


def infer_labels(client_module, address: str, model: str, rows):
    """The "label" output a classifier answers for `rows` (its FP32 "input"), through tritonclient's `http` or
    `grpc` module."""
    client = client_module.InferenceServerClient(address)
    try:
        tensor = client_module.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        return client.infer(model, [tensor]).as_numpy("label")
    finally:
        client.close()


def metric_samples(address: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} of one scrape."""
    status, _headers, body = request(address, "GET", "/metrics")
    assert status == 200
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def send_together(address: str, requests: list[tuple[str, bytes]], timeout: float = 60) -> list[tuple[int, bytes]]:
    """POST several requests on separate connections in one burst (all written before any is read).

    Written back to back from one thread, they reach the server within a millisecond or so, which is
    what concurrent clients look like to its batch queue; returns (status, body) per request, in order.
    """
    host, port = address.split(":")
    sockets = [socket.create_connection((host, int(port)), timeout=timeout) for _ in requests]
    try:
        for sock, (path, body) in zip(sockets, requests):
            head = (f"POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            sock.sendall(head + body)
        return [_read_response(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def stop_process(process: subprocess.Popen, timeout_s: float = 10) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout_s`."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout_s)
