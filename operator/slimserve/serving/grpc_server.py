"""The gRPC port: gRPC over HTTP/2 on the server's asyncio loop, the HTTP/2 protocol kept by `serving.http2`.

Why not `grpc.aio`: its core runs calls on a poller thread of its own and hands every completion of a call
(call received, message received, metadata sent, response sent) to the event loop's thread, each a GIL
hand-off and two context switches: a call cost several times what the same data plane costs over REST, and
no more than another Python gRPC server's (docs/performance.md has the measurements). Here a call never
leaves the loop's thread: an HTTP/2 session (`serving.http2`: libnghttp2 where installed, else `h2`) parses and
writes the frames (HPACK, flow control, settings, stream states), and this module adds what gRPC puts on top of HTTP/2: the path names the method, a message is a 5-byte
length-prefixed frame, the status travels in trailers.

What it serves: the unary and server-streaming methods of the `grpc.RpcMethodHandler`s it is given (the same
handlers gRPC-Web mounts, and grpcio-health-checking's `Health`), run with a `grpc_calls.ServicerContext`.
Messages are not compressed (a request with another `grpc-encoding` is answered UNIMPLEMENTED, listing
`identity`: clients then send plain messages). Bounded: a request message's size (RESOURCE_EXHAUSTED above
it), what one connection holds of requests still arriving (two messages' worth: RESOURCE_EXHAUSTED for the
call that goes over), the time from a call's headers to its whole message (`body_timeout_s`), the time a new
connection has to start HTTP/2 (`header_timeout_s`, the TLS handshake included), the streams open at once per
connection.
A call's `grpc-timeout` is its deadline (DEADLINE_EXCEEDED); a client's reset cancels its handler.

`stop(grace)`: no new connections; each connection gets a GOAWAY naming the last call it will serve, so a
client sends new calls elsewhere, while the calls in flight finish (at most `grace` seconds: then they are
cancelled) and their connections close.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl
import struct
import time
from collections.abc import Iterable
from typing import Any

import grpc
from hyperframe.frame import GoAwayFrame

from slimserve.serving.grpc_calls import (
    CallAborted,
    MalformedCall,
    ServicerContext,
    call_metadata,
    find_method,
    header_bytes,
    invoke,
    parse_timeout,
    status_trailers,
    text_metadata,
)
from slimserve.serving.http2 import SessionSettings, open_session, resolve_backend
from slimserve.serving.http2 import session as http2

log = logging.getLogger(__name__)

_PREFIX = struct.Struct(">BI")  # a message's frame: compressed flag, length
_FLAG_COMPRESSED = 0x01
MAX_CONCURRENT_STREAMS = 1000
# Large enough that a request of a few MB arrives without waiting for window updates.
_INITIAL_WINDOW = 4 * 1024 * 1024
_MAX_HEADER_LIST_BYTES = 16 * 1024
_SESSION_SETTINGS = SessionSettings(max_concurrent_streams=MAX_CONCURRENT_STREAMS, initial_window=_INITIAL_WINDOW,
                                    max_header_list_bytes=_MAX_HEADER_LIST_BYTES, connection_window=_INITIAL_WINDOW)
_RESPONSE_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))


class GrpcServer:
    """A gRPC server on the running asyncio loop: register handlers, `start(sock)`, `stop(grace)`.

    Registration takes what grpcio's generated `add_*_to_server` functions call, so a servicer made for
    `grpc.aio.server()` (as grpcio-health-checking's is) is added the same way."""

    def __init__(self, max_message_bytes: int, header_timeout_s: float, body_timeout_s: float,
                 ssl_context: ssl.SSLContext | None = None, protocol: str = "grpc", http2: str = "auto") -> None:
        """`http2`: the HTTP/2 backend (`serving.http2.BACKENDS`); "auto" takes libnghttp2 where it loads."""
        self.http2 = resolve_backend(http2)
        self.max_message_bytes = max_message_bytes
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.ssl_context = ssl_context
        self.protocol = protocol
        # What one connection may hold of requests still arriving: the message limit bounds one call, this the
        # calls a client interleaves (two of the largest messages' worth).
        self.arriving_limit_bytes = 2 * (max_message_bytes + _PREFIX.size)
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self.stopping = False

    # ---- registration ----

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            self._methods[f"/{service}/{name}"] = handler

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def method(self, path: str) -> grpc.RpcMethodHandler | None:
        handler = self._methods.get(path)
        if handler is None:
            handler = find_method(self._generic, path)
            if handler is not None:
                self._methods[path] = handler
        return handler

    # ---- life cycle ----

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), sock=sock, ssl=self.ssl_context,
            ssl_handshake_timeout=self.header_timeout_s if self.ssl_context and self.header_timeout_s > 0 else None,
        )

    async def stop(self, grace_s: float) -> None:
        """Serve the calls in flight for at most `grace_s` seconds, then cancel what is left and close."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.go_away()
        waits = [connection.idle.wait() for connection in connections]
        if waits:
            _done, pending = await asyncio.wait([asyncio.ensure_future(w) for w in waits], timeout=grace_s)
            for future in pending:
                future.cancel()
        for connection in list(self._connections):
            connection.abort_calls()
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()


class _Stream:
    """One call: its request as it arrives, then the task that serves it."""

    __slots__ = ("id", "method", "path", "headers", "body", "deadline", "timer", "task", "headers_sent",
                 "window_open")

    def __init__(self, stream_id: int, path: str, method: grpc.RpcMethodHandler,
                 headers: list[tuple[str, str]], deadline: float | None) -> None:
        self.id = stream_id
        self.path = path
        self.method = method
        self.headers = headers
        self.body = bytearray()
        self.deadline = deadline
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None
        self.headers_sent = False
        self.window_open: asyncio.Event | None = None  # set while a sender waits for flow-control window


class _Connection(asyncio.Protocol):
    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.session: http2.ServerSession | None = None
        self.streams: dict[int, _Stream] = {}
        self.idle = asyncio.Event()
        self.idle.set()
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self._flush_scheduled = False
        self._last_stream_id: int | None = None  # set by go_away: later calls are refused
        self._preface_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.arriving_bytes = 0  # of the requests whose message has not arrived whole

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._connections.add(self)
        address = transport.get_extra_info("peername")
        if isinstance(address, tuple):
            family = "ipv6" if ":" in address[0] else "ipv4"
            self.peer = f"{family}:{address[0]}:{address[1]}"
        self.session = open_session(_SESSION_SETTINGS, self.server.http2)
        self._flush()
        if self.server.header_timeout_s > 0:
            self._preface_timer = self.loop.call_later(self.server.header_timeout_s, self._preface_overdue)
        if self.server.stopping:
            self.go_away()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.session.receive(data)
        except http2.ProtocolFailure as error:
            log.debug("gRPC connection from %s closed: %s", self.peer, error)
            self._flush()
            self.close()
            return
        if self._preface_timer is not None and events:  # the preface and the client's SETTINGS came whole
            self._preface_timer.cancel()
            self._preface_timer = None
        for event in events:
            kind = event[0]
            if kind == http2.DATA:
                self._data(event[1], event[2])
            elif kind == http2.REQUEST:
                self._request(event[1], event[2], event[3])
            elif kind == http2.ENDED:
                self._request_complete(event[1])
            elif kind == http2.RESET:
                self._reset_by_client(event[1])
            elif kind == http2.WINDOW:
                self._open_windows()
            elif kind == http2.TERMINATED:
                self._flush()
                self.close()
                return
        # What these frames call for (a PING or SETTINGS acknowledgement, a refusal) leaves with the responses
        # the loop's ready tasks are about to send: flushed here, it would carry the first of a batch's
        # answers alone, a write and a wake-up of the client of its own, and split the client's next requests
        # into groups that take turns.
        self._flush_soon()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server._connections.discard(self)
        if self._preface_timer is not None:
            self._preface_timer.cancel()
        self.abort_calls()

    # ---- requests ----

    def _request(self, stream_id: int, raw_headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        if self._last_stream_id is not None and stream_id > self._last_stream_id:
            self.session.reset_stream(stream_id, http2.REFUSED_STREAM)
            return
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw_headers]
        fields = dict(headers)
        path = fields.get(":path", "")
        failure = _refusal(fields)
        method = None
        if failure is None:
            method = self.server.method(path)
            if method is None:
                failure = (grpc.StatusCode.UNIMPLEMENTED, f"unknown method {path}")
            elif method.request_streaming:
                failure = (grpc.StatusCode.UNIMPLEMENTED, f"{path} streams its requests; this server serves "
                                                          f"unary requests")
        deadline = None
        if failure is None and "grpc-timeout" in fields:
            try:
                deadline = time.monotonic() + parse_timeout(fields["grpc-timeout"])
            except MalformedCall as error:
                failure = (grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if failure is not None:
            self._trailers_only(stream_id, *failure, end_upload=not ended)
            return
        stream = _Stream(stream_id, path, method, headers, deadline)
        self.streams[stream_id] = stream
        self.idle.clear()
        if ended:
            self._request_complete(stream_id)
        elif self.server.body_timeout_s > 0:
            stream.timer = self.loop.call_later(self.server.body_timeout_s, self._body_overdue, stream)

    def _data(self, stream_id: int, data: bytes) -> None:
        # The session credits the peer at once: what a connection buffers is bounded here, not by the window.
        stream = self.streams.get(stream_id)
        if stream is None or stream.task is not None:
            return  # a refused call's upload, or data after the request ended
        stream.body += data
        self.arriving_bytes += len(data)
        if len(stream.body) > self.server.max_message_bytes + _PREFIX.size:
            self._refuse(stream, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"request message larger than the {self.server.max_message_bytes}-byte limit")
        elif self.arriving_bytes > self.server.arriving_limit_bytes:
            self._refuse(stream, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"this connection holds more than {self.server.arriving_limit_bytes} bytes of requests "
                         f"still arriving; send fewer large requests at once")

    def _release(self, stream: _Stream) -> None:
        """Forget what the stream's request had buffered (handed to its handler, or dropped)."""
        self.arriving_bytes -= len(stream.body)
        stream.body = bytearray()

    def _request_complete(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.task is not None:
            return
        if stream.timer is not None:
            stream.timer.cancel()
        try:
            message = _single_message(stream.body)
        except MalformedCall as error:
            code = grpc.StatusCode.UNIMPLEMENTED if "compressed" in str(error) else grpc.StatusCode.INVALID_ARGUMENT
            self._refuse(stream, code, str(error), upload_done=True)
            return
        self._release(stream)
        stream.task = self.loop.create_task(self._serve(stream, message))

    def _body_overdue(self, stream: _Stream) -> None:
        if stream.task is None and self.streams.get(stream.id) is stream:
            self._refuse(stream, grpc.StatusCode.DEADLINE_EXCEEDED,
                         f"request message not received within {self.server.body_timeout_s:g}s of its headers")
            self._flush()

    def _preface_overdue(self) -> None:
        log.debug("gRPC connection from %s closed: no HTTP/2 preface within %gs", self.peer,
                  self.server.header_timeout_s)
        self.close()

    def _reset_by_client(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        if stream.timer is not None:
            stream.timer.cancel()
        if stream.task is not None:
            stream.task.cancel()
        self._release(stream)
        self._maybe_idle()

    # ---- serving a call ----

    async def _serve(self, stream: _Stream, message: bytes) -> None:
        method = stream.method

        async def send(message: Any) -> None:  # a server-streaming call's `context.write`
            self._send_headers(stream, context)
            serialize = method.response_serializer
            await self._send_message(stream, serialize(message) if serialize else message)

        context = ServicerContext(self.server.protocol, call_metadata(stream.headers), self.peer, stream.deadline,
                                  send if method.response_streaming else None)
        try:
            request = method.request_deserializer(message) if method.request_deserializer else message
        except Exception as error:  # noqa: BLE001 - protobuf raises DecodeError, and others on odd input
            self._finish(stream, context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"request is not a valid message for {stream.path}: {error}")
            return
        response = None
        try:
            async with asyncio.timeout_at(_loop_deadline(self.loop, stream.deadline)):
                if method.unary_unary is not None:
                    response = await invoke(method.unary_unary, request, context)
                elif inspect.isasyncgenfunction(method.unary_stream):
                    async for item in method.unary_stream(request, context):
                        await send(item)
                else:
                    await invoke(method.unary_stream, request, context)
        except _StreamGone:
            return
        except CallAborted:
            pass
        except TimeoutError:
            context.set_code(grpc.StatusCode.DEADLINE_EXCEEDED)
            context.set_details("Deadline Exceeded")
        except asyncio.CancelledError:
            self._cancelled(stream)
            raise
        except Exception as error:  # noqa: BLE001 - a servicer bug must not take the connection down
            log.exception("gRPC call %s failed", stream.path)
            context.set_code(grpc.StatusCode.UNKNOWN)
            context.set_details(f"unexpected error in {stream.path}: {type(error).__name__}")
        finally:
            context.finish()
        code = context.code()
        if code == grpc.StatusCode.OK and response is not None:
            self._send_headers(stream, context)
            payload = method.response_serializer(response) if method.response_serializer else response
            try:
                await self._send_message(stream, payload)
            except _StreamGone:
                return
        self._finish(stream, context, code, context.details())

    def _send_headers(self, stream: _Stream, context: ServicerContext) -> None:
        if stream.headers_sent or self.streams.get(stream.id) is not stream:
            return
        stream.headers_sent = True
        metadata = header_bytes(text_metadata(context.initial_metadata))
        self.session.send_headers(stream.id, [*_RESPONSE_HEADERS, *metadata])

    async def _send_message(self, stream: _Stream, payload: bytes) -> None:
        """One message on the stream, sent as the flow-control windows allow (at once, usually);
        _StreamGone when the client reset the call or the connection closed meanwhile."""
        view = memoryview(_PREFIX.pack(0, len(payload)) + payload)
        while view:
            if self.streams.get(stream.id) is not stream or self._closed:
                raise _StreamGone()
            size = min(self.session.outbound_room(stream.id), len(view))
            if size <= 0:
                self._flush()  # what the session holds leaves as the windows allow; then wait for more room
                if self.session.outbound_room(stream.id) <= 0:
                    stream.window_open = asyncio.Event()
                    await stream.window_open.wait()
                continue
            self.session.send_data(stream.id, view[:size].tobytes() if size < len(view) else view.tobytes())
            view = view[size:]
        self._flush_soon()

    def _finish(self, stream: _Stream, context: ServicerContext, code: grpc.StatusCode, details: str) -> None:
        trailers = header_bytes(status_trailers(code.value[0], details) + text_metadata(context.trailing_metadata))
        if self.streams.get(stream.id) is not stream:
            return  # reset by the client meanwhile
        try:
            if stream.headers_sent:
                self.session.send_headers(stream.id, trailers, end_stream=True)
            else:  # trailers-only: the status in the response's only HEADERS frame
                self.session.send_headers(stream.id, [*_RESPONSE_HEADERS, *trailers], end_stream=True)
        except http2.StreamClosed:
            pass
        self._close_stream(stream)
        self._flush_soon()

    def _cancelled(self, stream: _Stream) -> None:
        if self.streams.get(stream.id) is stream and not self._closed:
            self.session.reset_stream(stream.id, http2.CANCEL)
            self._close_stream(stream)
            self._flush_soon()

    def _refuse(self, stream: _Stream, code: grpc.StatusCode, details: str, upload_done: bool = False) -> None:
        """End a call before it reaches its handler: the status alone, and the client told to stop sending."""
        if stream.timer is not None:
            stream.timer.cancel()
        self._release(stream)
        self._close_stream(stream)
        self._trailers_only(stream.id, code, details, end_upload=not upload_done)

    def _trailers_only(self, stream_id: int, code: grpc.StatusCode, details: str, end_upload: bool = False) -> None:
        headers = [*_RESPONSE_HEADERS, *header_bytes(status_trailers(code.value[0], details))]
        if code == grpc.StatusCode.UNIMPLEMENTED:  # also what a refused grpc-encoding needs: the one we take
            headers.append((b"grpc-accept-encoding", b"identity"))
        try:
            self.session.send_headers(stream_id, headers, end_stream=True)
        except http2.StreamClosed:
            pass
        else:
            if end_upload:  # the client is still sending a request that will not be read
                self.session.reset_stream(stream_id, http2.NO_ERROR)
        self._flush_soon()

    def _close_stream(self, stream: _Stream) -> None:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if not self.streams:
            self.idle.set()
            if self._last_stream_id is not None:
                self._flush()
                self.close()

    def _open_windows(self) -> None:
        for stream in self.streams.values():
            if stream.window_open is not None:
                stream.window_open.set()
                stream.window_open = None

    # ---- writing and closing ----

    def _flush_soon(self) -> None:
        # Responses finished in one loop turn (a batch's) leave in one write.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.session is None:
            return
        try:
            data = self.session.data_to_send()
        except http2.ProtocolFailure as error:  # what the session could not write: the connection is lost
            log.debug("gRPC connection from %s closed: %s", self.peer, error)
            self.close()
            return
        if data and not self._closed and self.transport is not None:
            self.transport.write(data)

    def go_away(self) -> None:
        """Tell the client the last call this connection serves; close once those are done. Written by hand:
        h2's close_connection would also end the calls still in flight."""
        if self._last_stream_id is not None or self._closed or self.transport is None:
            return
        self._last_stream_id = self.session.last_stream_id
        self._flush()
        self.transport.write(GoAwayFrame(stream_id=0, last_stream_id=self._last_stream_id, error_code=0).serialize())
        if not self.streams:
            self.close()

    def abort_calls(self) -> None:
        for stream in list(self.streams.values()):
            if stream.timer is not None:
                stream.timer.cancel()
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        self.arriving_bytes = 0
        self.idle.set()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _StreamGone(Exception):
    """The call's stream was reset by the client, or its connection closed, while a message waited to go."""


def _refusal(fields: dict[str, str]) -> tuple[grpc.StatusCode, str] | None:
    """Why a request's headers are not a gRPC call this server takes, or None."""
    if fields.get(":method") != "POST":
        return grpc.StatusCode.UNIMPLEMENTED, f"gRPC calls are POST requests, not {fields.get(':method')}"
    content_type = fields.get("content-type", "")
    if not content_type.startswith("application/grpc") or content_type.startswith("application/grpc-web"):
        return grpc.StatusCode.INVALID_ARGUMENT, f"content-type {content_type!r} is not application/grpc"
    encoding = fields.get("grpc-encoding", "identity")
    if encoding != "identity":
        return grpc.StatusCode.UNIMPLEMENTED, f"grpc-encoding {encoding!r} is not supported; send identity"
    return None


def _single_message(body: bytearray) -> bytes:
    if len(body) < _PREFIX.size:
        raise MalformedCall(f"truncated message: {len(body)} bytes, fewer than the {_PREFIX.size}-byte prefix")
    flags, length = _PREFIX.unpack_from(body)
    if flags & _FLAG_COMPRESSED:
        raise MalformedCall("compressed message without a grpc-encoding; send identity")
    if flags:
        raise MalformedCall(f"unknown message flags 0x{flags:02x}")
    available = len(body) - _PREFIX.size
    if length != available:
        raise MalformedCall(f"the message prefix says {length} bytes but {available} follow: a unary call "
                            f"carries exactly one message")
    return bytes(body[_PREFIX.size:])


def _loop_deadline(loop: asyncio.AbstractEventLoop, deadline: float | None) -> float | None:
    return None if deadline is None else loop.time() + (deadline - time.monotonic())
