"""The HTTP/2 server session on libnghttp2 (`nghttp2_lib`): frames, HPACK, flow control and the checks of a
peer's frames and headers (RFC 9113 section 8) run in C; Python sees one callback per header and per event.

nghttp2 pulls a response's body through a data source: each stream that sends a body has an `_Outbox` here,
which `send_data` fills and the read callback drains as the peer's windows allow; trailers follow it
(`send_headers` on a stream that already answered), submitted when the body's last byte is read. Request bodies are credited back to the peer as they
arrive (nghttp2's automatic WINDOW_UPDATE); what a connection holds is bounded by the gRPC port.
"""

from __future__ import annotations

import ctypes

from slimserve.serving.http2 import nghttp2_lib as ng
from slimserve.serving.http2.session import (
    DATA,
    ENDED,
    REQUEST,
    RESET,
    TERMINATED,
    WINDOW,
    ProtocolFailure,
    SessionSettings,
    StreamClosed,
)

_memmove = ctypes.memmove
# RFC 9113 6.5.2: a header field's size is its name and value plus 32 bytes of overhead.
_FIELD_OVERHEAD = 32


class _ArrivingHeaders:
    """A request's header fields as nghttp2 hands them over, and their size as the SETTINGS count it."""

    __slots__ = ("fields", "size")

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.size = 0


class _Outbox:
    """A stream's response body not yet taken by nghttp2, and whether its trailers are submitted."""

    __slots__ = ("pending", "offset", "trailers", "deferred")

    def __init__(self) -> None:
        self.pending = b""
        self.offset = 0
        self.trailers: ctypes.Array | None = None  # set when the response ends: the body ends where pending does
        self.deferred = False  # the read callback found nothing and paused the stream

    def buffered(self) -> int:
        return len(self.pending) - self.offset


class NgHttp2Session:
    name = "nghttp2"

    def __init__(self, settings: SessionSettings) -> None:
        lib = ng.load()
        if lib is None:
            raise RuntimeError("libnghttp2 is not installed (Debian: libnghttp2-14)")
        self._lib = lib
        self._max_header_list = settings.max_header_list_bytes
        self._events: list[tuple] = []
        self._headers: dict[int, _ArrivingHeaders] = {}  # requests whose headers are arriving
        self._outboxes: dict[int, _Outbox] = {}
        self._resets: list[tuple[int, int]] = []  # submitted after what is queued now has been written
        self._receiving = False
        self._goaway_received = False
        self._error = ""
        self._send_pointer = ng.BYTES()
        # The callbacks live as long as the session: nghttp2 keeps their addresses.
        self._callbacks = (
            ng.BeginHeadersCallback(self._on_begin_headers), ng.HeaderCallback(self._on_header),
            ng.FrameRecvCallback(self._on_frame_recv), ng.DataChunkRecvCallback(self._on_data_chunk),
            ng.StreamCloseCallback(self._on_stream_close), ng.ErrorCallback(self._on_error),
        )
        self._provider = ng.DataProvider(None, ng.DataSourceReadCallback(self._read_body))
        callbacks = ctypes.c_void_p()
        if lib.nghttp2_session_callbacks_new(ctypes.byref(callbacks)) != 0:
            raise MemoryError("nghttp2_session_callbacks_new")
        try:
            begin, header, frame, chunk, close, error = self._callbacks
            lib.nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, begin)
            lib.nghttp2_session_callbacks_set_on_header_callback(callbacks, header)
            lib.nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, frame)
            lib.nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, chunk)
            lib.nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, close)
            lib.nghttp2_session_callbacks_set_error_callback2(callbacks, error)
            session = ctypes.c_void_p()
            if lib.nghttp2_session_server_new(ctypes.byref(session), callbacks, None) != 0:
                raise MemoryError("nghttp2_session_server_new")
        finally:
            lib.nghttp2_session_callbacks_del(callbacks)
        self._session = session
        entries = (ng.SettingsEntry * 3)(
            (ng.SETTINGS_MAX_CONCURRENT_STREAMS, settings.max_concurrent_streams),
            (ng.SETTINGS_INITIAL_WINDOW_SIZE, settings.initial_window),
            (ng.SETTINGS_MAX_HEADER_LIST_SIZE, settings.max_header_list_bytes),
        )
        self._check(lib.nghttp2_submit_settings(session, 0, entries, 3))
        self._check(lib.nghttp2_submit_window_update(session, 0, 0, settings.connection_window))

    def __del__(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            self._session = None
            self._lib.nghttp2_session_del(session)

    # ---- receiving ----

    def receive(self, data: bytes) -> list[tuple]:
        self._events = events = []
        self._receiving = True
        try:
            consumed = self._lib.nghttp2_session_mem_recv(self._session, data, len(data))
        finally:
            self._receiving = False
        if consumed < 0:
            raise ProtocolFailure(self._error or ng.strerror(consumed))
        if not self._lib.nghttp2_session_want_read(self._session) and not self._goaway_received:
            # nghttp2 ended the connection (a connection error): its GOAWAY is queued.
            raise ProtocolFailure(self._error or "HTTP/2 connection error")
        return events

    def _on_begin_headers(self, _session, frame, _user) -> int:
        headers = ng.HeadersFrame.from_address(frame)
        if headers.hd.type == ng.HEADERS and headers.cat == ng.HCAT_REQUEST:
            self._headers[headers.hd.stream_id] = _ArrivingHeaders()
        return 0

    def _on_header(self, _session, frame, name, name_length, value, value_length, _flags, _user) -> int:
        stream_id = ng.FrameHeader.from_address(frame).stream_id
        arriving = self._headers.get(stream_id)
        if arriving is None:
            return 0  # a request's trailers: gRPC defines none, nothing reads them
        size = arriving.size + name_length + value_length + _FIELD_OVERHEAD
        if size > self._max_header_list:
            # Over what the SETTINGS said: nghttp2 resets the stream; the port never sees the request.
            del self._headers[stream_id]
            return ng.ERR_TEMPORAL_CALLBACK_FAILURE
        arriving.size = size
        arriving.fields.append((name[:name_length], value[:value_length]))
        return 0

    def _on_frame_recv(self, _session, frame, _user) -> int:
        hd = ng.FrameHeader.from_address(frame)
        kind, stream_id = hd.type, hd.stream_id
        if kind == ng.DATA:
            if hd.flags & ng.FLAG_END_STREAM:
                self._events.append((ENDED, stream_id))
        elif kind == ng.HEADERS:
            arriving = self._headers.pop(stream_id, None)
            ended = bool(hd.flags & ng.FLAG_END_STREAM)
            if arriving is not None:
                self._events.append((REQUEST, stream_id, arriving.fields, ended))
            elif ended:
                self._events.append((ENDED, stream_id))
        elif kind == ng.RST_STREAM:
            self._events.append((RESET, stream_id))
        elif kind == ng.WINDOW_UPDATE or (kind == ng.SETTINGS and not hd.flags & ng.FLAG_ACK):
            if not self._events or self._events[-1][0] != WINDOW:
                self._events.append((WINDOW,))
        elif kind == ng.GOAWAY:
            self._goaway_received = True
            self._events.append((TERMINATED,))
        return 0

    def _on_data_chunk(self, _session, _flags, stream_id, data, length, _user) -> int:
        self._events.append((DATA, stream_id, data[:length]))
        return 0

    def _on_stream_close(self, _session, stream_id, error_code, _user) -> int:
        self._outboxes.pop(stream_id, None)
        self._headers.pop(stream_id, None)
        if error_code and self._receiving:  # reset while reading: by the peer, or by nghttp2 for a bad frame
            self._events.append((RESET, stream_id))
        return 0

    def _on_error(self, _session, _code, message, length, _user) -> int:
        self._error = message[:length].decode("utf-8", "replace")
        return 0

    # ---- sending ----

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False) -> None:
        nva = (ng.Nv * len(headers))(*[(name, value, len(name), len(value), 0) for name, value in headers])
        outbox = self._outboxes.get(stream_id)
        if outbox is not None:  # trailers: submitted by the read callback once the body is out (queued now, a
            if outbox.trailers is not None:  # HEADERS frame would overtake the DATA still pending)
                raise StreamClosed(stream_id)
            outbox.trailers = nva
            self._resume(stream_id, outbox)
        elif end_stream:  # the whole response in one HEADERS frame
            self._check_stream(stream_id, self._lib.nghttp2_submit_response(self._session, stream_id, nva,
                                                                            len(headers), None))
        else:
            outbox = _Outbox()
            self._check_stream(stream_id, self._lib.nghttp2_submit_response(
                self._session, stream_id, nva, len(headers), ctypes.byref(self._provider)))
            self._outboxes[stream_id] = outbox

    def send_data(self, stream_id: int, data: bytes) -> None:
        outbox = self._outboxes.get(stream_id)
        if outbox is None or outbox.trailers is not None:
            raise StreamClosed(stream_id)
        outbox.pending = outbox.pending[outbox.offset:] + data if outbox.buffered() else data
        outbox.offset = 0
        self._resume(stream_id, outbox)

    def outbound_room(self, stream_id: int) -> int:
        lib, session = self._lib, self._session
        window = min(lib.nghttp2_session_get_stream_remote_window_size(session, stream_id),
                     lib.nghttp2_session_get_remote_window_size(session))
        outbox = self._outboxes.get(stream_id)
        return max(0, window - (outbox.buffered() if outbox is not None else 0))

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        # Deferred to the next write: a RST_STREAM submitted now would leave before a response HEADERS frame still
        # queued (the status of a refused call, whose upload the reset stops).
        self._outboxes.pop(stream_id, None)
        self._resets.append((stream_id, error_code))

    def data_to_send(self) -> bytes:
        parts: list[bytes] = []
        self._drain(parts)
        if self._resets:
            for stream_id, error_code in self._resets:
                self._lib.nghttp2_submit_rst_stream(self._session, 0, stream_id, error_code)
            self._resets.clear()
            self._drain(parts)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _drain(self, parts: list[bytes]) -> None:
        lib, session, pointer = self._lib, self._session, self._send_pointer
        while True:
            size = lib.nghttp2_session_mem_send(session, ctypes.byref(pointer))
            if size <= 0:
                if size < 0:
                    raise ProtocolFailure(ng.strerror(size))
                return
            parts.append(pointer[:size])

    @property
    def last_stream_id(self) -> int:
        return max(0, self._lib.nghttp2_session_get_last_proc_stream_id(self._session))

    # ---- the body's data source ----

    def _read_body(self, _session, stream_id, buffer, length, data_flags, _source, _user) -> int:
        outbox = self._outboxes.get(stream_id)
        if outbox is None:
            return ng.ERR_TEMPORAL_CALLBACK_FAILURE  # reset meanwhile: nghttp2 resets the stream
        available = outbox.buffered()
        if available:
            size = min(length, available)
            start = outbox.offset
            chunk = outbox.pending if start == 0 and size == len(outbox.pending) else \
                outbox.pending[start:start + size]
            _memmove(buffer, chunk, size)
            outbox.offset = start + size
            if outbox.trailers is not None and outbox.offset == len(outbox.pending):
                self._end_body(stream_id, outbox, data_flags)
            return size
        if outbox.trailers is not None:
            self._end_body(stream_id, outbox, data_flags)
            return 0
        outbox.deferred = True
        return ng.ERR_DEFERRED

    def _end_body(self, stream_id: int, outbox: _Outbox, data_flags) -> None:
        """The body's last read: no END_STREAM on its DATA frame, the trailers after it end the stream."""
        data_flags[0] = ng.DATA_FLAG_EOF | ng.DATA_FLAG_NO_END_STREAM
        self._lib.nghttp2_submit_trailer(self._session, stream_id, outbox.trailers, len(outbox.trailers))

    def _resume(self, stream_id: int, outbox: _Outbox) -> None:
        if outbox.deferred:
            outbox.deferred = False
            self._lib.nghttp2_session_resume_data(self._session, stream_id)

    # ---- errors ----

    @staticmethod
    def _check(code: int) -> None:
        if code < 0:
            raise RuntimeError(ng.strerror(code))

    @staticmethod
    def _check_stream(stream_id: int, code: int) -> None:
        if code < 0:
            raise StreamClosed(f"stream {stream_id}: {ng.strerror(code)}")
