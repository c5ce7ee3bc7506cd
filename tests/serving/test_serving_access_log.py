"""The access log of a real `slimserve serve` process: it is written off the event loop, so a stdout that
nobody reads stalls no request, and it is off with SLIMSERVE_ACCESS_LOG=false."""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import threading
import time

from serving_helpers import ServerProcess, request

MODEL = "builtin://digits-mlp"
PIPE_BYTES = 4 * 4096  # a small pipe, which a hundred access lines fill
FULL_BYTES = PIPE_BYTES - 4096  # a write that does not fit the last page waits for a free one


def _unread_bytes(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def test_a_stdout_nobody_reads_stalls_no_request(server_logs):
    server = ServerProcess(MODEL, server_logs, "--access-log")
    os.mkfifo(server.log_path)  # the server's stdout and stderr: a pipe the test holds open and does not read
    reader = os.open(server.log_path, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    drained = threading.Event()
    try:
        server.start()
        deadline = time.monotonic() + 30
        while _unread_bytes(reader) < FULL_BYTES:
            assert time.monotonic() < deadline, f"the pipe never filled ({_unread_bytes(reader)} bytes)"
            request(server.http_url, "GET", "/v2/health/live", timeout=5)
        for _ in range(50):
            assert request(server.http_url, "GET", "/v2/health/ready", timeout=5)[0] == 200
        assert _unread_bytes(reader) >= FULL_BYTES  # still full: the writer is blocked, requests are not
    finally:
        threading.Thread(target=_drain, args=(reader, drained), daemon=True).start()
        try:
            assert server.stop() == 0
        finally:
            drained.set()
            server.kill()


def _drain(fd: int, done: threading.Event) -> None:
    while not done.is_set():
        try:
            os.read(fd, 65536)
        except BlockingIOError:
            time.sleep(0.01)
    os.close(fd)


def test_switched_off_by_its_variable_it_writes_no_line(server_logs):
    server = ServerProcess(MODEL, server_logs, env={"SLIMSERVE_ACCESS_LOG": "false"}).start()
    try:
        status, headers, _body = request(server.http_url, "GET", "/v2/health/live", headers={"X-Request-Id": "quiet-1"})
        assert status == 200 and headers["x-request-id"] == "quiet-1"  # ids still travel
    finally:
        assert server.stop() == 0
    log = server.log()
    assert "stopped" in log  # the server's last line: written after any queued access line
    assert "quiet-1" not in log and "slimserve.access" not in log
