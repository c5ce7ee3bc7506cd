"""The inference server as a child process (`slimserve serve`), exactly as a ModelService's pod runs it."""

from __future__ import annotations

import errno
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from slimserve.api.model_service import BatchingSpec
from slimserve.serving.web.options import WebOptions


class ServerError(RuntimeError):
    """The server could not start; the message ends with the tail of its log."""


def ensure_port_free(host: str, port: int, flag: str) -> None:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServerError(f"port {port} on {host} is in use; choose another with {flag}") from None
            raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class ServerProcess:
    def __init__(self, *, artifact: str, model_name: str, host: str, http_port: int, grpc_port: int,
                 batching: BatchingSpec, log_path: Path, web: WebOptions = WebOptions()):
        self.http = f"http://{host}:{http_port}"
        self.grpc_address = f"{host}:{grpc_port}"
        self.log_path = log_path
        self.web = web
        self.argv = [
            sys.executable, "-m", "slimserve.cli.main", "serve",
            "--artifact", artifact, "--model-name", model_name, "--host", host,
            "--http-port", str(http_port), "--grpc-port", str(grpc_port),
            "--max-batch-size", str(batching.max_batch_size), "--max-latency-ms", str(batching.max_latency_ms),
            *([] if batching.enabled else ["--no-batching"]),
            *web.flags(),
        ]
        self.process: subprocess.Popen | None = None

    def start(self, ready_timeout_s: float = 300) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"the server exited with code {self.process.returncode}: {self.log_tail()}")
            if self._ready():
                return
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"the server was not ready after {ready_timeout_s:.0f}s: {self.log_tail()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGTERM: the server stops accepting, drains in-flight requests and exits."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"
