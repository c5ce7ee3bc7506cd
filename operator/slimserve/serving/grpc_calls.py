"""What a gRPC call is, whatever carries it: the servicer's context, the call's metadata and status headers.

The native gRPC port (`grpc_server`) and gRPC-Web on the HTTP port (`web.grpc_web`) both run the servicer's
own `grpc.RpcMethodHandler`s with a `ServicerContext` from here, so a servicer sees one interface (the parts
of `grpc.aio.ServicerContext` a servicer uses) and the two transports map errors, deadlines and metadata
the same way.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc

Metadata = tuple[tuple[str, str | bytes], ...]

# Request headers that describe the HTTP exchange, not the call: kept out of the invocation metadata.
TRANSPORT_HEADERS = frozenset({
    "host", "connection", "content-length", "content-type", "transfer-encoding", "accept", "accept-encoding",
    "accept-language", "origin", "referer", "cookie", "user-agent", "te", "keep-alive", "grpc-timeout",
    "grpc-encoding", "grpc-accept-encoding",
    "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest", "sec-ch-ua", "sec-ch-ua-mobile", "sec-ch-ua-platform",
})
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# Up to 8 digits then one unit letter, as the gRPC spec writes a timeout.
_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")


class MalformedCall(ValueError):
    """A call's headers or framing break the gRPC wire contract; the message says how."""


class CallAborted(Exception):
    """Raised by `ServicerContext.abort`; ends the call with the status set on the context."""


class ServicerContext:
    """The parts of `grpc.aio.ServicerContext` a servicer uses, for a call served by one of our transports.

    `abort` raises at the call itself, so both `context.abort(...)` (sync servicers) and
    `await context.abort(...)` (grpc.aio servicers) end the call. `write` (server streaming) goes to the
    transport's `send_message`; a unary transport passes none.
    """

    def __init__(self, protocol: str, metadata: Metadata, peer: str, deadline: float | None,
                 send_message: Callable[[Any], Awaitable[None]] | None = None) -> None:
        """`protocol`: the metrics label of the transport ("grpc", "grpc-web"); `deadline`: time.monotonic()
        by which the call must end, None for none."""
        self.protocol = protocol
        self._metadata = metadata
        self._peer = peer
        self._deadline = deadline
        self._send_message = send_message
        self._code = grpc.StatusCode.OK
        self._details = ""
        self._done = False
        self.initial_metadata: list[tuple[str, str | bytes]] = []
        self.trailing_metadata: list[tuple[str, str | bytes]] = []

    def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence = ()) -> None:
        if code == grpc.StatusCode.OK:
            raise ValueError("abort() needs an error status, not OK")
        self._code, self._details = code, details
        if trailing_metadata:
            self.trailing_metadata = list(trailing_metadata)
        raise CallAborted(details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def set_trailing_metadata(self, trailing_metadata: Sequence) -> None:
        self.trailing_metadata = list(trailing_metadata)

    async def send_initial_metadata(self, initial_metadata: Sequence) -> None:
        # Sent with the response's headers: one HEADERS frame, not one of its own before the response.
        self.initial_metadata = list(initial_metadata)

    async def write(self, message: Any) -> None:
        if self._send_message is None:
            raise RuntimeError("write() is for server-streaming calls; a unary call returns its response")
        await self._send_message(message)

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return self._done

    def finish(self) -> None:
        self._done = True


async def invoke(function: Callable, request: Any, context: ServicerContext) -> Any:
    """Run a servicer method: a coroutine on the loop, a sync one on a thread (it must not block the loop)."""
    if inspect.iscoroutinefunction(function):
        return await function(request, context)
    result = await asyncio.to_thread(function, request, context)
    return await result if inspect.isawaitable(result) else result


@dataclass(frozen=True)
class _CallDetails(grpc.HandlerCallDetails):
    method: str
    invocation_metadata: Metadata = ()


def find_method(handlers: Iterable[grpc.GenericRpcHandler], path: str) -> grpc.RpcMethodHandler | None:
    """The method handler the first of `handlers` that serves `path` has for it, or None. Asked without the
    call's metadata, so a transport may keep the answer per path."""
    details = _CallDetails(path)
    for handler in handlers:
        method = handler.service(details)
        if method is not None:
            return method
    return None


def call_metadata(headers: Iterable[tuple[str, str]]) -> Metadata:
    """The invocation metadata in a call's (lower-case) request headers: pseudo-headers and transport headers
    left out, `-bin` values base64-decoded (an undecodable one is dropped, as grpc does)."""
    metadata: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name in TRANSPORT_HEADERS or name.startswith((":", "access-control-")):
            continue
        if name.endswith("-bin"):
            try:
                metadata.append((name, base64.b64decode(value + "=" * (-len(value) % 4))))
            except ValueError:
                continue
        else:
            metadata.append((name, value))
    return tuple(metadata)


def text_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> list[tuple[str, str]]:
    """Metadata as header-safe text: binary values of `-bin` keys base64-encoded."""
    out = []
    for name, value in metadata:
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        out.append((name.lower(), value))
    return out


def header_bytes(pairs: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header pairs as HTTP carries them: latin-1 bytes."""
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in pairs]


def status_trailers(code: int, message: str) -> list[tuple[str, str]]:
    """`grpc-status` and, when there is one, `grpc-message` percent-encoded as the gRPC spec asks."""
    trailers = [("grpc-status", str(code))]
    if message:
        trailers.append(("grpc-message", quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")))
    return trailers


def parse_timeout(value: str) -> float:
    """Seconds of a `grpc-timeout` header such as `1500m`; MalformedCall when malformed."""
    match = _TIMEOUT.match(value.strip())
    if not match:
        raise MalformedCall(f"grpc-timeout {value!r} is not 1 to 8 digits followed by one of H M S m u n")
    return int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]
