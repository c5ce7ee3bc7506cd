"""The interface both HTTP/2 backends implement, and the events they report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Events `ServerSession.receive` returns, as tuples whose first item is the kind (tuples: a call makes
# several, and the port dispatches on the kind alone):
REQUEST = 1  # (REQUEST, stream_id, headers: list[(bytes, bytes)], ended: bool): a request's headers, whole
DATA = 2  # (DATA, stream_id, data: bytes): part of a request's body
ENDED = 3  # (ENDED, stream_id): the client finished sending on the stream
RESET = 4  # (RESET, stream_id): the stream ended abnormally (the client's RST_STREAM, or refused by the session)
WINDOW = 5  # (WINDOW,): a peer's WINDOW_UPDATE or SETTINGS may have made room for response data
TERMINATED = 6  # (TERMINATED,): the peer said GOAWAY, or the session ended the connection for an error

# RST_STREAM codes the port sends.
NO_ERROR = 0x0
CANCEL = 0x8
REFUSED_STREAM = 0x7


class ProtocolFailure(Exception):
    """The peer broke HTTP/2 on the connection level; the session has queued its GOAWAY: flush, then close."""


class StreamClosed(Exception):
    """A response part for a stream the session no longer has open."""


@dataclass(frozen=True)
class SessionSettings:
    """What the server announces: streams open at once, each stream's receive window, the largest header list
    it takes, and the connection's receive window (all bytes)."""

    max_concurrent_streams: int
    initial_window: int
    max_header_list_bytes: int
    connection_window: int


class ServerSession(Protocol):
    name: str  # the backend, for logs and tests

    def receive(self, data: bytes) -> list[tuple]:
        """Feed bytes from the socket; the events they completed. ProtocolFailure on a connection error."""

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False) -> None:
        """The response's headers (first call on a stream) or its trailers (a later one, with end_stream)."""

    def send_data(self, stream_id: int, data: bytes) -> None:
        """Response body bytes, at most `outbound_room(stream_id)` of them."""

    def outbound_room(self, stream_id: int) -> int:
        """How many more response bytes the peer's flow-control windows take on this stream now."""

    def reset_stream(self, stream_id: int, error_code: int) -> None: ...

    def data_to_send(self) -> bytes:
        """The bytes to write to the socket, in order; empty when nothing is due."""

    @property
    def last_stream_id(self) -> int:
        """The highest stream id a client opened on this connection (a GOAWAY's last stream)."""
