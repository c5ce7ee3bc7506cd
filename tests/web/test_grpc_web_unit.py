"""The gRPC-Web middleware, framing and options in process, with small servicers of the tests' own."""

from __future__ import annotations

import argparse
import asyncio
import base64
import time
from urllib.parse import unquote

import grpc
import pytest

from slimserve.serving.proto import open_inference_v2_pb2 as pb
from slimserve.serving.grpc_calls import MalformedCall, parse_timeout, status_trailers
from slimserve.serving.web.framing import FramingError, decode_text_body
from slimserve.serving.web.grpc_web import GrpcWebMiddleware
from slimserve.serving.web.options import WebOptions, add_web_arguments, parse_origins, web_options
from tests.web.grpc_web_helpers import BINARY, TEXT, frame, parse_body

OK, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNIMPLEMENTED = 0, 2, 3, 4, 8, 12


async def _echo_async(request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
    if request.name == "slow":
        await asyncio.sleep(2)
    if request.name == "abort":
        await context.abort(grpc.StatusCode.NOT_FOUND, "no model 'abort' here: 100% sure, ünïcode")
    if request.name == "set-code":
        context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
        context.set_details("set without abort")
    if request.name == "bug":
        raise RuntimeError("secret internals")
    metadata = dict(context.invocation_metadata())
    context.set_trailing_metadata([("x-seen", ",".join(sorted(metadata))), ("x-trace-bin", metadata.get("x-trace-bin", b""))])
    return pb.ModelMetadataResponse(name=request.name, platform=str(metadata.get("x-custom", "")))


def _echo_sync(request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
    time.sleep(0.01)  # runs on a worker thread, not the event loop
    return pb.ModelMetadataResponse(name=request.name.upper(), platform=str(context.time_remaining()))


def _handler(function, **streaming):
    factory = grpc.unary_stream_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler
    return factory(function, request_deserializer=pb.ModelMetadataRequest.FromString,
                   response_serializer=pb.ModelMetadataResponse.SerializeToString)


HANDLERS = grpc.method_handlers_generic_handler("test.Echo", {
    "Async": _handler(_echo_async), "Sync": _handler(_echo_sync), "Stream": _handler(_echo_async, streaming=True),
})


async def _inner_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 299, "headers": []})
    await send({"type": "http.response.body", "body": b"inner"})


def asgi(path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST",
         max_message_bytes: int = 1024) -> tuple[int, dict[str, str], bytes]:
    app = GrpcWebMiddleware(_inner_app, [HANDLERS], max_message_bytes)
    sent: list[dict] = []
    chunks = [{"type": "http.request", "body": body[:3], "more_body": True},
              {"type": "http.request", "body": body[3:], "more_body": False}]

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "client": ("127.0.0.1", 40000),
             "headers": [(k.encode(), v.encode()) for k, v in {"content-type": BINARY, **(headers or {})}.items()]}
    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, b"".join(m.get("body", b"") for m in sent[1:])


def call(method: str, name: str, headers: dict[str, str] | None = None, **kwargs):
    status, answer_headers, body = asgi(f"/test.Echo/{method}", frame(pb.ModelMetadataRequest(name=name).SerializeToString()),
                                        headers, **kwargs)
    messages, trailers = parse_body(body)
    code = int(trailers.get("grpc-status", answer_headers.get("grpc-status", -1)))
    message = unquote(trailers.get("grpc-message", answer_headers.get("grpc-message", "")))
    response = pb.ModelMetadataResponse.FromString(messages[0]) if messages else None
    return status, code, message, response, trailers


def test_async_servicer_answers_with_a_message_and_ok_trailers():
    status, code, _, response, trailers = call("Async", "digits", {"x-custom": "hello"})
    assert (status, code, response.name, response.platform) == (200, OK, "digits", "hello")
    assert trailers["grpc-status"] == "0"


def test_sync_servicer_runs_off_the_event_loop_and_sees_its_deadline():
    _, code, _, response, _ = call("Sync", "digits")
    assert (code, response.name, response.platform) == (OK, "DIGITS", "None")
    _, code, _, response, _ = call("Sync", "digits", {"grpc-timeout": "5S"})
    assert code == OK and 0 < float(response.platform) < 5


def test_invocation_metadata_carries_call_headers_but_not_transport_ones():
    trace = bytes(range(5))
    headers = {"x-custom": "v", "x-trace-bin": base64.b64encode(trace).decode(), "cookie": "session=1",
               "origin": "http://a.test", "user-agent": "test"}
    _, code, _, _, trailers = call("Async", "meta", headers)
    assert code == OK
    assert trailers["x-seen"] == "x-custom,x-trace-bin"
    assert base64.b64decode(trailers["x-trace-bin"]) == trace


def test_abort_becomes_the_status_with_a_percent_encoded_message():
    status, code, message, response, _ = call("Async", "abort")
    assert (status, code, response) == (200, grpc.StatusCode.NOT_FOUND.value[0], None)
    assert message == "no model 'abort' here: 100% sure, ünïcode"


def test_set_code_without_abort_is_the_calls_status():
    _, code, message, _, _ = call("Async", "set-code")
    assert (code, message) == (grpc.StatusCode.FAILED_PRECONDITION.value[0], "set without abort")


def test_a_servicer_bug_is_unknown_without_its_internals():
    _, code, message, _, _ = call("Async", "bug")
    assert code == UNKNOWN
    assert "RuntimeError" in message and "secret" not in message


def test_grpc_timeout_ends_a_slow_call_with_deadline_exceeded():
    started = time.monotonic()
    _, code, _, _, _ = call("Async", "slow", {"grpc-timeout": "50m"})
    assert code == DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.5


def test_a_malformed_grpc_timeout_is_invalid_argument():
    _, code, message, _, _ = call("Async", "digits", {"grpc-timeout": "soon"})
    assert code == INVALID_ARGUMENT and "grpc-timeout" in message


def test_streaming_methods_are_unimplemented():
    _, code, message, _, _ = call("Stream", "digits")
    assert code == UNIMPLEMENTED and "unary" in message


def test_a_body_over_the_limit_is_resource_exhausted():
    _, code, message, _, _ = call("Async", "x" * 2000, max_message_bytes=1024)
    assert code == RESOURCE_EXHAUSTED and "1024" in message


def test_text_format_accepts_separately_padded_chunks_and_answers_in_base64():
    first = base64.b64encode(frame(pb.ModelMetadataRequest(name="ab").SerializeToString())[:4])
    second = base64.b64encode(frame(pb.ModelMetadataRequest(name="ab").SerializeToString())[4:])
    assert first.endswith(b"=")  # so the body really is two padded chunks
    status, headers, body = asgi("/test.Echo/Sync", first + b"\r\n" + second, {"content-type": TEXT})
    assert (status, headers["content-type"]) == (200, "application/grpc-web-text+proto")
    messages, trailers = parse_body(base64.b64decode(body))
    assert pb.ModelMetadataResponse.FromString(messages[0]).name == "AB" and trailers["grpc-status"] == "0"


def test_other_paths_and_content_types_reach_the_inner_app():
    assert asgi("/v2/models/x/infer", b"{}", {"content-type": "application/json"})[0] == 299
    assert asgi("/", b"", {"content-type": ""}, method="GET")[0] == 299
    assert asgi("/test.Echo/Async", b"", {"content-type": BINARY}, method="OPTIONS")[0] == 299  # CORS answers preflights


@pytest.mark.parametrize(("body", "words"), [
    (b"AAAA!AAA", "not valid base64"),
    (b"AAA", "not valid base64"),
])
def test_decode_text_body_rejects_bad_base64(body, words):
    with pytest.raises(FramingError, match=words):
        decode_text_body(body)


def test_parse_timeout_units():
    assert parse_timeout("2S") == 2.0 and parse_timeout("1500m") == 1.5 and parse_timeout("1H") == 3600.0
    with pytest.raises(MalformedCall):
        parse_timeout("123456789S")  # more than 8 digits


def test_status_trailers_leave_printable_ascii_but_percent_encode_percent_and_unicode():
    (_, (_, message)) = status_trailers(3, "bad 'x': 5% > 4, ü\n")
    assert message == "bad 'x': 5%25 > 4, %C3%BC%0A"


def _parse(argv: list[str], environ: dict[str, str]) -> WebOptions:
    parser = argparse.ArgumentParser()
    add_web_arguments(parser)
    return web_options(parser.parse_args(argv), environ)


def test_flags_win_over_the_environment():
    environ = {"SLIMSERVE_GRPC_WEB": "true", "SLIMSERVE_PLAYGROUND": "yes", "SLIMSERVE_CORS_ORIGINS": "https://a.test"}
    assert _parse([], environ) == WebOptions(True, True, ("https://a.test",))
    assert _parse(["--no-grpc-web", "--no-playground", "--cors-origin", "https://b.test", "--cors-origin", "*"], environ) \
        == WebOptions(False, False, ("https://b.test", "*"))
    assert _parse([], {}) == WebOptions()


@pytest.mark.parametrize(("environ", "named"), [
    ({"SLIMSERVE_GRPC_WEB": "maybe"}, "SLIMSERVE_GRPC_WEB"),
    ({"SLIMSERVE_PLAYGROUND": "2"}, "SLIMSERVE_PLAYGROUND"),
    ({"SLIMSERVE_CORS_ORIGINS": "https://ok.test,https://bad.test/path"}, "SLIMSERVE_CORS_ORIGINS"),
])
def test_a_bad_environment_value_names_its_variable(environ, named):
    with pytest.raises(ValueError, match=named):
        _parse([], environ)


def test_parse_origins_splits_dedupes_and_explains_a_trailing_slash():
    assert parse_origins(" https://a.test , https://a.test,,http://[::1]:8080 ") == ("https://a.test", "http://[::1]:8080")
    with pytest.raises(ValueError, match="--cors-origin: 'https://a.test/' .*trailing '/'"):
        parse_origins(["https://a.test/"])
