"""Read deadlines for HTTP requests: a client that is slow to send costs its own connection only.

uvicorn has none (its keep-alive timer stops at a request's first byte, encode/uvicorn#157), so one client
could hold a connection for ever with half a header, or with a Content-Length and no body. This protocol
is uvicorn's httptools one with two deadlines, in the spirit of Go's ReadHeaderTimeout and of the
`--timeout-request-start` / `--timeout-request-complete` uvicorn once planned (10 s and 60 s):

- headers: from the connection's start, or from the first byte of a later request on it, until the end
  of the headers; past it the connection is closed;
- body: from the end of the headers until the end of the body; past it the client gets 408 (unless a
  response already started) and the connection is closed. Time the server itself stops reading (flow
  control, a pipelined request waiting its turn) is not charged to the client.

Requests join the batch queue and count as in flight only once their body is complete (see `rest.py`),
so these deadlines bound what a stalled client holds: a socket and its buffered bytes.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from slimserve.api.workload import DEFAULTS

log = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT_S = DEFAULTS.header_timeout_s
DEFAULT_BODY_TIMEOUT_S = DEFAULTS.body_timeout_s

_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
    b"connection: close\r\n\r\n%s"
)
_HEADERS, _BODY = "headers", "body"  # what a client may still owe on its connection


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body read deadlines, in seconds.

    A deadline is armed only when a read leaves a request unfinished, so a request that arrives whole
    (the usual small inference request) costs no timer at all.
    """

    def __init__(self, *args, header_timeout_s: float, body_timeout_s: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._body_timeout_s = body_timeout_s
        self._owed: str | None = None  # _HEADERS, _BODY or None
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_for: str | None = None

    def _watch(self) -> None:
        """Arm the deadline of what the client owes now (between requests, uvicorn's keep-alive timeout rules)."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._deadline_for = self._owed
        if self._owed == _HEADERS:
            self._deadline = self.loop.call_later(self._header_timeout_s, self._headers_expired)
        elif self._owed == _BODY:
            self._deadline = self.loop.call_later(self._body_timeout_s, self._body_expired)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._owed = _HEADERS
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._deadline_for != self._owed:
            self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._owed = None
        self._watch()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._owed = _HEADERS

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._owed = _BODY

    def on_message_complete(self) -> None:
        self._owed = None
        super().on_message_complete()

    def _headers_expired(self) -> None:
        log.info("closing a connection from %s: no complete request headers within %.1fs",
                 _peer(self.client), self._header_timeout_s)
        self.transport.close()

    def _body_expired(self) -> None:
        if self.flow.read_paused:  # the server is not reading: not the client's delay
            self._watch()
            return
        log.info("closing a connection from %s: request body incomplete after %.1fs",
                 _peer(self.client), self._body_timeout_s)
        if self.cycle is not None and not self.cycle.response_started:
            message = b'{"error": "request body not received within %.1f s"}' % self._body_timeout_s
            self.transport.write(_REQUEST_TIMEOUT % (len(message), message))
        self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown"
