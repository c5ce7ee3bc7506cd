"""gRPC-Web on the HTTP port: an ASGI middleware that runs the server's own gRPC method handlers.

Browsers cannot speak native gRPC (no HTTP/2 trailers), so they use gRPC-Web. Rather than a translating
proxy (Envoy) or `sonora`, this middleware decodes the gRPC-Web frame, looks the method up in the same
`grpc.GenericRpcHandler`s the gRPC server was given, and awaits the very same servicer coroutine: requests
share the gRPC path's data plane, batching, metrics and error mapping. `sonora` 0.2.3 (its latest release,
2023) was not used: it pins urllib3<2 (the rest of the stack needs 2.x), reflects the Host header as the
allowed CORS origin, and answers a garbage or truncated body with a crash or an empty request instead of a
gRPC status.

Only unary methods are served (all of the Open Inference Protocol's are). Every answer to a gRPC-Web
request carries a `grpc-status`: in the trailer frame on success, as a header (a trailers-only response)
on error, so a client always learns what went wrong, and a bad request never reaches the servicer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any

import grpc

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
from slimserve.serving.web.framing import (
    HEADER,
    WireFormat,
    data_frame,
    is_grpc_web,
    single_message,
    trailer_frame,
    wire_format,
)

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_ACCEPTED = "application/grpc-web+proto or application/grpc-web-text+proto"


class GrpcWebMiddleware:
    """ASGI middleware: gRPC-Web calls of the given handlers' methods here, every other request to `app`."""

    def __init__(
        self,
        app: ASGIApp,
        handlers: Iterable[grpc.GenericRpcHandler],
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.app = app
        self.handlers = tuple(handlers)
        self.max_message_bytes = max_message_bytes

    def _method(self, path: str) -> grpc.RpcMethodHandler | None:
        return find_method(self.handlers, path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        content_type = headers.get("content-type", "")
        method = self._method(scope["path"])
        if method is None and not is_grpc_web(content_type):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":  # a CORS preflight the CORS layer did not answer
            await self.app(scope, receive, send)
            return
        fmt = wire_format(content_type)
        if scope["method"] != "POST":
            await _respond_status(send, fmt, grpc.StatusCode.UNIMPLEMENTED,
                                  f"gRPC-Web calls are POST requests, not {scope['method']}",
                                  http_status=405, extra=[(b"allow", b"POST")])
        elif fmt is None:
            await _respond_status(send, None, grpc.StatusCode.INVALID_ARGUMENT,
                                  f"content-type {content_type or '(none)'!r} is not gRPC-Web; send {_ACCEPTED}",
                                  http_status=415)
        elif method is None:
            await _respond_status(send, fmt, grpc.StatusCode.UNIMPLEMENTED, f"unknown method {scope['path']}")
        elif method.request_streaming or method.response_streaming:
            await _respond_status(send, fmt, grpc.StatusCode.UNIMPLEMENTED,
                                  f"{scope['path']} is a streaming method; gRPC-Web here serves unary methods")
        else:
            await self._call(scope, receive, send, headers, fmt, method)

    async def _call(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str], fmt: WireFormat,
        method: grpc.RpcMethodHandler,
    ) -> None:
        try:
            deadline = None
            if "grpc-timeout" in headers:
                deadline = time.monotonic() + parse_timeout(headers["grpc-timeout"])
            body = await _read_body(receive, self._body_limit(fmt))
            message = single_message(fmt.decode(body))
        except MalformedCall as error:
            await _respond_status(send, fmt, grpc.StatusCode.INVALID_ARGUMENT, str(error))
            return
        except _BodyTooLarge:
            await _respond_status(send, fmt, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"request larger than the {self.max_message_bytes}-byte message limit")
            return
        try:
            request = method.request_deserializer(message) if method.request_deserializer else message
        except Exception as error:  # noqa: BLE001 - protobuf raises DecodeError, and others on odd input
            await _respond_status(send, fmt, grpc.StatusCode.INVALID_ARGUMENT,
                                  f"request body is not a valid message for {scope['path']}: {error}")
            return
        context = ServicerContext("grpc-web", call_metadata(headers.items()), _peer(scope), deadline)
        try:
            response = await asyncio.wait_for(invoke(method.unary_unary, request, context), context.time_remaining())
        except CallAborted:
            await _respond_status(send, fmt, context.code(), context.details(), metadata=context.trailing_metadata)
            return
        except TimeoutError:
            await _respond_status(send, fmt, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            return
        except Exception as error:  # noqa: BLE001 - a servicer bug must not take the server down
            log.exception("gRPC-Web call %s failed", scope["path"])
            await _respond_status(send, fmt, grpc.StatusCode.UNKNOWN,
                                  f"unexpected error in {scope['path']}: {type(error).__name__}")
            return
        if context.code() != grpc.StatusCode.OK:  # set_code without abort, as grpc allows
            await _respond_status(send, fmt, context.code(), context.details(), metadata=context.trailing_metadata)
            return
        payload = method.response_serializer(response) if method.response_serializer else response
        trailers = status_trailers(0, "") + text_metadata(context.trailing_metadata)
        body = fmt.encode(data_frame(payload) + trailer_frame(trailers))
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", fmt.content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                *header_bytes(text_metadata(context.initial_metadata)),
            ],
        })
        await send({"type": "http.response.body", "body": body})

    def _body_limit(self, fmt: WireFormat) -> int:
        framed = self.max_message_bytes + HEADER.size
        return (framed + 2) // 3 * 4 + 64 if fmt.text else framed  # base64 grows 3 bytes to 4


class _BodyTooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise MalformedCall("the client disconnected before sending the whole body")
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge()
        chunks.append(chunk)
        if not event.get("more_body", False):
            return b"".join(chunks)


async def _respond_status(
    send: Send,
    fmt: WireFormat | None,
    code: grpc.StatusCode,
    message: str,
    *,
    http_status: int = 200,
    metadata: Sequence = (),
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """A trailers-only response: the status travels in headers, the body is empty."""
    content_type = fmt.content_type if fmt is not None else "application/grpc-web+proto"
    trailers = status_trailers(code.value[0], message) + text_metadata(metadata)
    await send({
        "type": "http.response.start",
        "status": http_status,
        "headers": [(b"content-type", content_type.encode()), (b"content-length", b"0"),
                    *header_bytes(trailers), *extra],
    })
    await send({"type": "http.response.body", "body": b""})


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", ())}


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"ipv4:{client[0]}:{client[1]}" if client else "unknown"
