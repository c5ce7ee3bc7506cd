"""The gRPC port's transport (`serving.grpc_server`) against grpcio's own client: metadata both ways, every
way a call can end (its status, deadline, the client's cancel, a reset), flow control on a message larger than
the windows, server streaming, the size and time bounds, bytes that are not HTTP/2, and a graceful stop (its
GOAWAY, the calls it refuses and the one it lets finish), each on both HTTP/2 backends (libnghttp2 and h2).

The server runs on an event loop of its own thread with a test service, so the blocking grpcio client and
raw HTTP/2 connections (the `h2` library on a socket) can drive it from the test's thread.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from hyperframe.frame import Frame, GoAwayFrame, RstStreamFrame

from slimserve.serving.grpc_server import GrpcServer
from slimserve.serving.http2 import describe, nghttp2_lib
from slimserve.serving.proto import open_inference_v2_pb2 as pb

SERVICE = "test.Probe"
MAX_MESSAGE = 1024 * 1024
BIG_REPLY = 3 * 1024 * 1024  # far above HTTP/2's default 64 KiB stream window: the reply must be paced
TIMEOUT_S = 0.5  # the server's header and body timeouts
WAIT_S = 30  # how long a test waits for something it expects


class ProbeService:
    """Handlers that show what the transport did; their events are set from the loop's thread."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.entered = threading.Event()
        self.release: asyncio.Event | None = None

    async def echo(self, request: bytes, context) -> bytes:
        metadata = dict(context.invocation_metadata())
        await context.send_initial_metadata((("x-echo", metadata.get("x-in", "")),))
        context.set_trailing_metadata((("x-trace-bin", metadata.get("x-trace-bin", b"")),))
        return request

    async def hold(self, request: bytes, context) -> bytes:
        """Waits for `release`; notes a cancellation."""
        self.release = asyncio.Event()
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b"released"

    async def big(self, request: bytes, context) -> bytes:
        return bytes(range(256)) * (BIG_REPLY // 256)

    async def fail(self, request: bytes, context) -> bytes:
        raise ValueError("a bug")

    async def refuse(self, request: bytes, context) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: ü", trailing_metadata=(("x-why", "gone"),))

    async def count(self, request: bytes, context):
        await context.send_initial_metadata((("x-count", "3"),))
        for number in range(3):
            yield str(number).encode()

    async def infer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        return pb.ModelInferResponse(model_name=request.model_name)

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        unary = grpc.unary_unary_rpc_method_handler
        return {
            "Echo": unary(self.echo), "Hold": unary(self.hold), "Big": unary(self.big), "Fail": unary(self.fail),
            "Refuse": unary(self.refuse), "Count": grpc.unary_stream_rpc_method_handler(self.count),
            "Infer": unary(self.infer, request_deserializer=pb.ModelInferRequest.FromString,
                           response_serializer=pb.ModelInferResponse.SerializeToString),
        }


class ServerThread:
    def __init__(self, http2: str) -> None:
        self.service = ProbeService()
        self.loop = asyncio.new_event_loop()
        self.server = GrpcServer(MAX_MESSAGE, header_timeout_s=TIMEOUT_S, body_timeout_s=TIMEOUT_S, http2=http2)
        self.server.add_registered_method_handlers(SERVICE, self.service.handlers())
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self.server.start(self.sock))

    def run(self, coroutine, timeout: float = WAIT_S):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        if not self.server.stopping:
            self.run(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_S)


@pytest.fixture(params=["nghttp2", "h2"])
def server(request):
    if request.param == "nghttp2" and nghttp2_lib.load() is None:
        pytest.skip("libnghttp2 is not installed here (Debian: libnghttp2-14)")
    running = ServerThread(request.param)
    try:
        yield running
    finally:
        running.close()


def _call(channel: grpc.Channel, method: str, streaming: bool = False, **serializers):
    path = f"/{SERVICE}/{method}"
    return channel.unary_stream(path, **serializers) if streaming else channel.unary_unary(path, **serializers)


def _channel(server: ServerThread, **options) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{server.port}", **options)


def test_the_http2_backend_is_chosen_by_name_and_a_missing_library_is_said_at_once(monkeypatch):
    assert GrpcServer(MAX_MESSAGE, TIMEOUT_S, TIMEOUT_S, http2="h2").http2 == "h2"
    with pytest.raises(ValueError, match="not one of"):
        GrpcServer(MAX_MESSAGE, TIMEOUT_S, TIMEOUT_S, http2="quic")
    monkeypatch.setattr(nghttp2_lib, "load", lambda: None)  # a machine without libnghttp2
    assert GrpcServer(MAX_MESSAGE, TIMEOUT_S, TIMEOUT_S).http2 == "h2"  # auto falls back to h2
    assert "libnghttp2 not found" in describe("h2")
    with pytest.raises(ValueError, match="libnghttp2 is not installed"):
        GrpcServer(MAX_MESSAGE, TIMEOUT_S, TIMEOUT_S, http2="nghttp2")


def test_a_call_carries_metadata_both_ways(server):
    with _channel(server) as channel:
        reply, call = _call(channel, "Echo").with_call(
            b"hello", metadata=(("x-in", "abc"), ("x-trace-bin", b"\x00\xff")), timeout=WAIT_S)
    assert reply == b"hello"
    assert ("x-echo", "abc") in call.initial_metadata()
    assert ("x-trace-bin", b"\x00\xff") in call.trailing_metadata()
    assert call.code() == grpc.StatusCode.OK


def test_a_servicer_status_a_bug_and_an_unknown_method_each_reach_the_client(server):
    with _channel(server) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            _call(channel, "Refuse")(b"", timeout=WAIT_S)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert refused.value.details() == "no such thing: ü"
        assert ("x-why", "gone") in refused.value.trailing_metadata()

        with pytest.raises(grpc.RpcError) as failed:
            _call(channel, "Fail")(b"", timeout=WAIT_S)
        assert failed.value.code() == grpc.StatusCode.UNKNOWN and "ValueError" in failed.value.details()

        with pytest.raises(grpc.RpcError) as unknown:
            channel.unary_unary(f"/{SERVICE}/Nothing")(b"", timeout=WAIT_S)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED and "Nothing" in unknown.value.details()

        with pytest.raises(grpc.RpcError) as garbage:
            _call(channel, "Infer")(b"\xff\xff\xff", timeout=WAIT_S)
        assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # ...and the connection still serves.
        assert _call(channel, "Echo")(b"after", timeout=WAIT_S) == b"after"


def test_a_reply_larger_than_the_flow_control_windows_arrives_whole(server):
    with _channel(server, options=[("grpc.max_receive_message_length", 2 * BIG_REPLY)]) as channel:
        reply = _call(channel, "Big")(b"", timeout=WAIT_S)
    assert reply == bytes(range(256)) * (BIG_REPLY // 256)


def test_server_streaming_sends_its_metadata_each_message_then_the_status(server):
    with _channel(server) as channel:
        call = _call(channel, "Count", streaming=True)(b"", timeout=WAIT_S)
        assert list(call) == [b"0", b"1", b"2"]
        assert ("x-count", "3") in call.initial_metadata()
        assert call.code() == grpc.StatusCode.OK


def test_a_request_over_the_size_limit_is_refused_and_a_compressed_one_is_told_to_send_identity(server):
    with _channel(server, options=[("grpc.max_send_message_length", 4 * MAX_MESSAGE)]) as channel:
        with pytest.raises(grpc.RpcError) as too_large:
            _call(channel, "Echo")(b"x" * (2 * MAX_MESSAGE), timeout=WAIT_S)
        assert too_large.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(MAX_MESSAGE) in too_large.value.details()
    with _channel(server, compression=grpc.Compression.Gzip) as channel:
        with pytest.raises(grpc.RpcError) as compressed:
            _call(channel, "Echo")(b"y" * 1000, timeout=WAIT_S)
        assert compressed.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "identity" in compressed.value.details()


def test_the_deadline_and_the_clients_cancel_both_cancel_the_handler(server):
    with _channel(server) as channel:
        with pytest.raises(grpc.RpcError) as late:
            _call(channel, "Hold")(b"", timeout=0.5)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert server.service.cancelled.wait(WAIT_S)

        server.service.cancelled.clear()
        server.service.entered.clear()
        future = _call(channel, "Hold").future(b"", timeout=WAIT_S)
        assert server.service.entered.wait(WAIT_S)
        future.cancel()
        assert server.service.cancelled.wait(WAIT_S)


class RawHttp2:
    """An HTTP/2 client connection on a plain socket, for what grpcio's client never does."""

    def __init__(self, server: ServerThread) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())
        self.pending: list[h2.events.Event] = []
        self.next_event(0, h2.events.RemoteSettingsChanged)  # the server's windows, before anything is sent

    def start_call(self, method: str, metadata: tuple[tuple[str, str], ...] = (), message: bytes | None = None) -> int:
        """A call's headers, and its whole message in the same write when given."""
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, [
            (":method", "POST"), (":scheme", "http"), (":path", f"/{SERVICE}/{method}"), (":authority", "test"),
            ("content-type", "application/grpc"), ("te", "trailers"), *metadata,
        ])
        if message is not None:
            self.h2.send_data(stream_id, b"\x00" + len(message).to_bytes(4, "big") + message, end_stream=True)
        self.sock.sendall(self.h2.data_to_send())
        return stream_id

    def response_headers(self, stream_id: int) -> dict[str, str]:
        """The first headers the server sends on the stream (blocks until they come)."""
        return dict(self.next_event(stream_id, h2.events.ResponseReceived).headers)

    def next_event(self, stream_id: int, *kinds: type) -> h2.events.Event:
        """The first event of one of `kinds` on the stream (0: the connection's; blocks until it comes)."""
        return self._first(lambda event: isinstance(event, kinds) and getattr(event, "stream_id", 0) == stream_id)

    def refusal(self, stream_id: int) -> h2.events.Event:
        """How the server ended a stream it did not serve: its RST_STREAM, or a GOAWAY ending the connection."""
        return self._first(lambda event: isinstance(event, h2.events.ConnectionTerminated) or (
            isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id))

    def _first(self, wanted) -> h2.events.Event:
        while True:
            for index, event in enumerate(self.pending):
                if wanted(event):
                    return self.pending.pop(index)
            data = self.sock.recv(65536)
            assert data, "the server closed the connection first"
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.DataReceived):  # credit back at once, as a client reading would
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                self.pending.append(event)
            self.sock.sendall(self.h2.data_to_send())

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """`data` on the stream, in frames no larger than the server allows."""
        size = self.h2.max_outbound_frame_size
        for start in range(0, len(data), size):
            self.h2.send_data(stream_id, data[start:start + size])
        if end:
            self.h2.end_stream(stream_id)
        self.sock.sendall(self.h2.data_to_send())


def test_requests_arriving_at_once_on_a_connection_are_bounded_beyond_one_message_each(server):
    limit = server.server.arriving_limit_bytes
    payload = bytes(range(256)) * (MAX_MESSAGE * 3 // 4 // 256)  # under the message limit
    message = b"\x00" + len(payload).to_bytes(4, "big") + payload
    first_part = message[:limit // 3 + 1]  # three first parts go over the connection's limit, two do not
    client = RawHttp2(server)
    calls = [client.start_call("Echo") for _ in range(3)]
    for stream_id in calls:
        client.send(stream_id, first_part)
    refused = client.response_headers(calls[2])
    assert refused["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
    assert f"more than {limit} bytes of requests still arriving" in refused["grpc-message"]
    for stream_id in calls[:2]:  # the two before it still arrive whole and are served
        client.send(stream_id, message[len(first_part):], end=True)
    for stream_id in calls[:2]:
        assert client.response_headers(stream_id)[":status"] == "200"
        echoed = b""
        while True:
            event = client.next_event(stream_id, h2.events.DataReceived, h2.events.TrailersReceived)
            if isinstance(event, h2.events.TrailersReceived):
                assert dict(event.headers)["grpc-status"] == "0"
                break
            echoed += event.data
        assert echoed == message
    client.sock.close()


def test_headers_over_the_announced_list_size_never_reach_a_handler(server):
    client = RawHttp2(server)
    stream_id = client.start_call("Hold", metadata=(("x-big", "a" * 20_000),), message=b"")  # 16 KiB announced
    refusal = client.refusal(stream_id)  # libnghttp2 resets the stream; h2 ends the connection
    assert isinstance(refusal, (h2.events.StreamReset, h2.events.ConnectionTerminated))
    assert not server.service.entered.is_set()
    client.sock.close()
    with _channel(server) as channel:  # and the port still serves
        assert _call(channel, "Echo")(b"still here", timeout=WAIT_S) == b"still here"


def test_a_call_whose_message_never_comes_ends_after_the_body_timeout(server):
    client = RawHttp2(server)
    stream_id = client.start_call("Echo")  # headers, then silence
    headers = client.response_headers(stream_id)
    assert headers["grpc-status"] == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
    assert "not received within" in headers["grpc-message"]
    client.sock.close()


def test_after_the_stop_began_an_open_connection_gets_a_goaway_and_its_new_calls_are_refused(server):
    client = RawHttp2(server)
    in_flight = client.start_call("Hold")  # keeps the connection open through the stop
    client.h2.send_data(in_flight, b"\x00\x00\x00\x00\x00", end_stream=True)
    client.sock.sendall(client.h2.data_to_send())
    assert server.service.entered.wait(WAIT_S)
    stopping = server.run(_begin(server.server.stop(WAIT_S)))
    late = client.start_call("Echo")  # sent before the client reads the GOAWAY, as a busy client would
    seen = {}
    for frame in _frames(client.sock):  # raw frames: h2's client would refuse anything after a GOAWAY
        seen.setdefault(type(frame), frame)
        if isinstance(frame, RstStreamFrame) and frame.stream_id == late:
            break
    goaway = seen[GoAwayFrame]
    assert goaway.error_code == 0 and goaway.last_stream_id == in_flight
    assert seen[RstStreamFrame].error_code == h2.errors.ErrorCodes.REFUSED_STREAM
    server.loop.call_soon_threadsafe(server.service.release.set)  # the call in flight still ends, and then the stop
    server.run(_finish(stopping))
    assert not server.service.cancelled.is_set()


def _whole_frames(buffer: bytes) -> tuple[list[Frame], bytes]:
    """The whole HTTP/2 frames at the start of `buffer`, parsed, and the bytes after them."""
    frames = []
    while len(buffer) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
        if len(buffer) < 9 + length:
            break
        frame.parse_body(memoryview(buffer[9:9 + length]))
        frames.append(frame)
        buffer = buffer[9 + length:]
    return frames, buffer


def _frames(sock: socket.socket):
    """The HTTP/2 frames arriving on `sock`, parsed one by one."""
    buffer = b""
    while True:
        frames, buffer = _whole_frames(buffer)
        yield from frames
        data = sock.recv(65536)
        assert data, "the server closed the connection first"
        buffer += data


def test_bytes_that_are_not_http2_close_the_connection(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while sock.recv(65536):  # the server's SETTINGS and GOAWAY, then the close
            pass


@pytest.mark.parametrize("sent", [b"", b"PRI * HTTP/2.0\r\n"], ids=["silent", "half-a-preface"])
def test_a_connection_that_never_starts_http2_is_closed(server, sent):
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
        sock.sendall(sent)
        received = b""
        while chunk := sock.recv(65536):  # the server's SETTINGS, then the close
            received += chunk
    assert received  # it spoke HTTP/2 first, and the test's read ended because it closed


def test_a_graceful_stop_finishes_the_call_in_flight_and_takes_no_new_one(server):
    with _channel(server) as channel:
        future = _call(channel, "Hold").future(b"", timeout=WAIT_S)
        assert server.service.entered.wait(WAIT_S)
        stopping = server.run(_begin(server.server.stop(WAIT_S)))
        stopped = asyncio.run_coroutine_threadsafe(_finish(stopping), server.loop)
        with pytest.raises(OSError):  # the port no longer accepts
            socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S).close()
        assert not stopped.done() and not future.done()
        server.loop.call_soon_threadsafe(server.service.release.set)
        assert future.result(WAIT_S) == b"released"
        stopped.result(WAIT_S)
    assert not server.service.cancelled.is_set()


async def _begin(coroutine) -> asyncio.Task:
    """Start `coroutine` and let it run up to its first wait (a stop: up to waiting for the calls in flight)."""
    task = asyncio.ensure_future(coroutine)
    await asyncio.sleep(0)
    return task


async def _finish(task: asyncio.Task) -> None:
    await task


def test_a_stop_whose_grace_runs_out_cancels_the_call(server):
    with _channel(server) as channel:
        future = _call(channel, "Hold").future(b"", timeout=WAIT_S)
        assert server.service.entered.wait(WAIT_S)
        server.run(server.server.stop(0.2))
        assert server.service.cancelled.is_set()
        with pytest.raises(grpc.RpcError) as ended:
            future.result(WAIT_S)
        assert ended.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


def test_a_ping_acknowledgement_leaves_in_one_write_with_the_answer_completed_in_the_same_loop_turn(server):
    """What a read calls for (here a PING's acknowledgement) waits for the loop's turn, so that it leaves with the
    answers the ready tasks send: flushed at once, it went in a write of its own and, under load, took the first
    of a batch's answers with it, a wake-up of the client for one answer."""
    client = RawHttp2(server)
    client.next_event(0, h2.events.SettingsAcknowledged)  # the server's last write of the connection's start
    writes: list[bytes] = []

    async def watch_writes() -> None:
        (connection,) = server.server._connections
        write = connection.transport.write
        connection.transport.write = lambda data: (writes.append(bytes(data)), write(data))[1]

    server.run(watch_writes())
    client.h2.ping(b"8 bytes!")  # in the same TCP write as the call below
    stream_id = client.start_call("Echo", message=b"hello")
    assert client.next_event(0, h2.events.PingAckReceived).ping_data == b"8 bytes!"
    client.next_event(stream_id, h2.events.StreamEnded)

    written = [([type(frame).__name__ for frame in frames], rest) for frames, rest in map(_whole_frames, writes)]
    assert written == [(["PingFrame", "HeadersFrame", "DataFrame", "HeadersFrame"], b"")], written
