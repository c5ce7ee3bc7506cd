"""Request ids and the access log: one JSON line per request, written off the event loop.

A request keeps the id its client sent in `X-Request-Id` (gRPC: `x-request-id` metadata) when that is
short printable ASCII, else gets a fresh uuid4 hex, so a hostile header never reaches a log line as given.
The endpoints send the id back and put it in the access line and in their error logs.

The loop only puts each line's values on a queue; a writer thread wakes every `FLUSH_INTERVAL_S`, formats
what has queued and writes it in one go. Not `logging.handlers.QueueListener`: it wakes for every record,
and handing the GIL back and forth once per request cost a tiny model about half its throughput; woken a
few times a second, the thread costs a few microseconds per line. A slow or blocked stdout stalls the
writer, never a request; past `MAX_QUEUED` lines waiting, new ones are dropped and counted.
"""

from __future__ import annotations

import functools
import logging
import queue
import re
import sys
import threading
import time
import uuid
from typing import TextIO

import orjson

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_LENGTH = 128
_ACCEPTABLE_ID = re.compile(rf"[!-~]{{1,{MAX_REQUEST_ID_LENGTH}}}")  # visible ASCII, no space or control
LOGGER_NAME = "slimserve.access"
FLUSH_INTERVAL_S = 0.1
MAX_QUEUED = 100_000  # ~20 MB of lines waiting for a stdout that does not take them


def request_id(sent: str | bytes | None) -> str:
    """The client's id when it is acceptable, a new one otherwise."""
    if isinstance(sent, bytes):
        sent = sent.decode("latin-1")
    if sent and _ACCEPTABLE_ID.fullmatch(sent):
        return sent
    return uuid.uuid4().hex


def format_line(entry: tuple) -> str:
    """One queued entry, (time.time(), request id, model, protocol, status, latency ms, batch size), as JSON."""
    created, rid, model, protocol, status, latency_ms, batch_size = entry
    # time, level, logger and message as every JSON log line of the server has them (SLIMSERVE_LOG_FORMAT=json),
    # so one log pipeline reads both; the fields after them are the access line's own.
    return orjson.dumps({
        "time": _timestamp(created), "level": "INFO", "logger": LOGGER_NAME,
        "message": f"{protocol} {model or '-'} {status} {latency_ms} ms", "request_id": rid, "model": model,
        "protocol": protocol, "status": status, "latency_ms": latency_ms, "batch_size": batch_size,
    }).decode()


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def _timestamp(created: float) -> str:
    whole = int(created)
    return f"{_second(whole)}.{int((created - whole) * 1000):03d}Z"


class AccessLog:
    """`record(...)` one finished request; a disabled log costs one attribute check."""

    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.dropped = 0
        self._stream = stream or sys.stdout
        self._entries: queue.SimpleQueue = queue.SimpleQueue()
        self._closing = threading.Event()
        self._writer = threading.Thread(target=self._write_until_closed, name="slimserve-access-log", daemon=True)
        if enabled:
            self._writer.start()

    def record(
        self, request_id: str, model: str | None, protocol: str, status: int, latency_s: float,
        batch_size: int | None = None,
    ) -> None:
        if not self.enabled:
            return
        if self._entries.qsize() >= MAX_QUEUED:
            self.dropped += 1
            return
        self._entries.put((time.time(), request_id, model or None, protocol, status, round(latency_s * 1000, 3),
                           batch_size))

    def close(self) -> None:
        """Write what is queued, then stop the writer thread."""
        if self._writer.is_alive():
            self._closing.set()
            self._writer.join()

    def _write_until_closed(self) -> None:
        while not self._closing.wait(FLUSH_INTERVAL_S):
            self._write_queued()
        self._write_queued()

    def _write_queued(self) -> None:
        lines = []
        while True:
            try:
                lines.append(format_line(self._entries.get_nowait()))
            except queue.Empty:
                break
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            log.warning("access log: %d lines dropped, stdout did not keep up", dropped)
        if lines:
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
            except (OSError, ValueError) as error:  # a closed or broken stdout must not end the writer
                log.warning("access log: %d lines not written: %s", len(lines), error)
