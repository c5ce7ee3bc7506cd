"""The REST endpoint of the Open Inference Protocol: a lean ASGI app, built by `build_app`.

Why not Starlette or FastAPI: on a tiny model the HTTP layer is most of the cost, and a Starlette
router + Request/Response objects cost several times this app's time per request (docs/performance.md). The app stays open to more
routes: `app.add_route(method, "/path/{param}", endpoint)` or `app.mount(prefix, any_asgi_app)`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from slimserve.api.workload import DEFAULTS
from slimserve.serving.access_log import REQUEST_ID_HEADER, AccessLog, request_id
from slimserve.serving.auth import API_KEY_HEADER, AUTHORIZATION_HEADER, Auth
from slimserve.serving.dataplane import BATCH_SIZE_PARAMETER, DataPlane, RequestTimer
from slimserve.serving.errors import (
    MethodNotAllowed,
    PayloadTooLarge,
    RouteNotFound,
    Unauthenticated,
    UnsupportedMediaType,
    InvalidInput,
    client_message,
    http_status,
)
from slimserve.serving.metrics import ServerMetrics
from slimserve.serving.tracing import DECODE_SPAN, ENCODE_SPAN, REST_SPAN
from slimserve.serving.rest_codec import HEADER_LENGTH, JSON_CONTENT_TYPE, dumps, parse_infer_request, render_infer_response

log = logging.getLogger(__name__)

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
DEFAULT_MAX_BODY_BYTES = DEFAULTS.max_body_bytes
_REQUEST_ID = REQUEST_ID_HEADER.encode()
_AUTHORIZATION = AUTHORIZATION_HEADER.encode()
_API_KEY = API_KEY_HEADER.encode()
_CHALLENGE = [(b"www-authenticate", b'Bearer realm="slimserve"')]


@dataclass
class HttpRequest:
    scope: dict
    receive: Callable
    params: dict[str, str]
    max_body_bytes: int
    request_id: str = ""

    def header(self, name: bytes) -> str | None:
        return _header(self.scope, name)

    async def body(self) -> bytes:
        """The whole body, refused past `max_body_bytes` (declared or actual, after decompression)."""
        declared = self.header(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise PayloadTooLarge(f"request body of {declared} bytes is above the limit of {self.max_body_bytes}")
        chunks, total = [], 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ConnectionAbortedError("client disconnected")
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body_bytes:
                raise PayloadTooLarge(f"request body is above the limit of {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self._decompress(body)

    def _decompress(self, body: bytes) -> bytes:
        encoding = (self.header(b"content-encoding") or "identity").strip().lower()
        if encoding == "identity":
            return body
        wbits = {"gzip": 31, "deflate": 15}.get(encoding)
        if wbits is None:
            raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported (gzip, deflate, identity)")
        inflater = zlib.decompressobj(wbits)
        try:
            data = inflater.decompress(body, self.max_body_bytes + 1)
        except zlib.error as error:
            raise InvalidInput(f"request body is not valid {encoding}: {error}") from None
        if len(data) > self.max_body_bytes or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"decompressed request body is above the limit of {self.max_body_bytes} bytes")
        return data


@dataclass
class HttpResponse:
    status: int
    body: bytes
    content_type: str = JSON_CONTENT_TYPE
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    batch_size: int | None = None  # rows of the model call the request rode in (access log)


@dataclass
class StreamingResponse:
    """A response sent as its chunks come (server-sent events); closed early when the client leaves."""

    status: int
    chunks: AsyncGenerator[bytes, None]
    content_type: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    batch_size: None = None  # (access log) a stream is a sequence of the engine's running batch, not one call


Endpoint = Callable[[HttpRequest], Awaitable[HttpResponse | StreamingResponse]]


@dataclass
class _Route:
    method: str
    pattern: re.Pattern
    endpoint: Endpoint
    name: str
    public: bool  # answered without a credential when auth is on (health, metrics)


def _compile(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts))
    return re.compile(f"^{regex}$")


class RestApp:
    """ASGI app: OIP routes plus whatever is added; errors become `{"error": ...}` with their status."""

    def __init__(
        self, metrics: ServerMetrics, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, access_log: AccessLog | None = None
    ) -> None:
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log or AccessLog(enabled=False)
        self.auth: Auth | None = None  # when set, every route but the public ones needs a credential
        self._routes: list[_Route] = []
        self._mounts: list[tuple[str, ASGIApp]] = []

    def add_route(
        self, method: str, template: str, endpoint: Endpoint, name: str | None = None, public: bool = False
    ) -> None:
        """Route `method` + `template` (with `{param}` segments) to `endpoint`; `name` labels its metrics;
        a `public` route needs no credential."""
        self._routes.append(_Route(method.upper(), _compile(template), endpoint, name or endpoint.__name__, public))

    def mount(self, prefix: str, app: ASGIApp) -> None:
        """Send every request whose path starts with `prefix` (and no route matched) to another ASGI app."""
        self._mounts.append((prefix, app))

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        start = time.perf_counter()
        path, method = scope["path"], scope["method"]
        route, params, allowed = None, {}, False
        for candidate in self._routes:
            match = candidate.pattern.match(path)
            if match:
                allowed = True
                if candidate.method == method or (method == "HEAD" and candidate.method == "GET"):
                    route, params = candidate, match.groupdict()
                    break
        if route is None:
            for prefix, app in self._mounts:
                if path.startswith(prefix):
                    await app(scope, receive, send)
                    return
        rid = request_id(_header(scope, _REQUEST_ID))
        if route is None:
            error = MethodNotAllowed(f"{method} is not allowed on {path}") if allowed else RouteNotFound(f"no endpoint at {path}")
            response = _error_response(error)
        else:
            try:
                if self.auth is not None and not route.public:
                    await self.auth.check("rest", _header(scope, _AUTHORIZATION), _header(scope, _API_KEY))
                response = await route.endpoint(HttpRequest(scope, receive, params, self.max_body_bytes, rid))
            except ConnectionAbortedError:
                return
            except Exception as error:  # noqa: BLE001 - every failure becomes an error response
                if http_status(error) >= 500:
                    log.exception("%s %s failed (request id %s)", method, path, rid)
                response = _error_response(error)
            self.metrics.count("rest", route.name, str(response.status))
        if isinstance(response, StreamingResponse):
            await _stream(send, receive, response, rid)
        else:
            await _send(send, response, rid)
        self.access_log.record(rid, params.get("name"), "rest", response.status, time.perf_counter() - start,
                               response.batch_size)


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _error_response(error: BaseException) -> HttpResponse:
    headers = _CHALLENGE if isinstance(error, Unauthenticated) else []
    return HttpResponse(http_status(error), dumps({"error": client_message(error)}), headers=headers)


async def _send(send: Callable, response: HttpResponse, rid: str) -> None:
    headers = [
        (b"content-type", response.content_type.encode()),
        (b"content-length", str(len(response.body)).encode()),
        (_REQUEST_ID, rid.encode()),
        *response.headers,
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def _stream(send: Callable, receive: Callable, response: StreamingResponse, rid: str) -> None:
    """Send chunks as they come; a client that disconnects closes the iterator (and what feeds it) at once."""
    headers = [(b"content-type", response.content_type.encode()), (b"cache-control", b"no-cache"),
               (_REQUEST_ID, rid.encode()), *response.headers]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})

    async def pump() -> None:
        async for chunk in response.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    sending, leaving = asyncio.ensure_future(pump()), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({sending, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sending, leaving):
            task.cancel()
        await asyncio.gather(sending, leaving, return_exceptions=True)
        await response.chunks.aclose()
    if sending.done() and not sending.cancelled() and sending.exception() is not None:
        log.error("stream of request %s failed: %s", rid, sending.exception())


async def _lifespan(receive: Callable, send: Callable) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _json(status: int, document: Any) -> HttpResponse:
    return HttpResponse(status, dumps(document))


def build_app(dataplane: DataPlane, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, auth: Auth | None = None) -> RestApp:
    """The REST app of the Open Inference Protocol (+ /metrics) over `dataplane`; add routes to it freely.
    With `auth`, every route but health and /metrics needs a credential."""
    metrics = dataplane.metrics
    app = RestApp(metrics, max_body_bytes, dataplane.access_log)
    app.auth = auth

    async def server_live(request: HttpRequest) -> HttpResponse:
        live = dataplane.live()
        return _json(200 if live else 400, {"live": live})

    async def server_ready(request: HttpRequest) -> HttpResponse:
        ready = dataplane.ready()
        return _json(200 if ready else 400, {"ready": ready})

    async def server_metadata(request: HttpRequest) -> HttpResponse:
        return _json(200, dataplane.server_metadata())

    async def model_metadata(request: HttpRequest) -> HttpResponse:
        return _json(200, dataplane.model_metadata(request.params["name"], request.params.get("version", "")))

    async def model_ready(request: HttpRequest) -> HttpResponse:
        name = request.params["name"]
        ready = dataplane.model_ready(name, request.params.get("version", ""))
        return _json(200 if ready else 400, {"name": name, "ready": ready})

    async def infer(request: HttpRequest) -> HttpResponse:
        name, version = request.params["name"], request.params.get("version", "")
        dataplane.check_inference_target(name, version)
        # In flight, and in the batch queue, only once the body is complete: a slow or stalled client
        # holds its own connection (until the server's body timeout), never anyone's batch.
        body = await request.body()
        payload = content_type = None
        trace = dataplane.tracing.start(
            REST_SPAN, request.header(b"traceparent"), request.header(b"tracestate"), request.request_id, name
        )
        try:
            with trace, RequestTimer(metrics, "rest"):
                length = request.header(HEADER_LENGTH.encode())
                if length is not None and not length.strip().isdigit():
                    raise InvalidInput(f"Inference-Header-Content-Length {length!r} is not a number")
                with trace.phase(DECODE_SPAN):
                    parsed = parse_infer_request(body, int(length) if length is not None else None, name, version)
                response = await dataplane.infer(parsed, trace)
                with trace.phase(ENCODE_SPAN):
                    payload, content_type, header_length = render_infer_response(response)
        finally:
            if dataplane.payload_log is not None:
                dataplane.payload_log.record(request.request_id, name, body,
                                             request.header(b"content-type") or JSON_CONTENT_TYPE,
                                             payload, content_type)
        headers = [] if header_length is None else [(HEADER_LENGTH.encode(), str(header_length).encode())]
        return HttpResponse(200, payload, content_type, headers, response.parameters[BATCH_SIZE_PARAMETER])

    async def prometheus(request: HttpRequest) -> HttpResponse:
        body, content_type = metrics.exposition()
        return HttpResponse(200, body, content_type)

    # Inference first: routes are tried in order and it is the hot path.
    app.add_route("POST", "/v2/models/{name}/infer", infer)
    app.add_route("POST", "/v2/models/{name}/versions/{version}/infer", infer)
    app.add_route("GET", "/v2/health/live", server_live, public=True)
    app.add_route("GET", "/v2/health/ready", server_ready, public=True)
    app.add_route("GET", "/v2", server_metadata)
    app.add_route("GET", "/v2/models/{name}", model_metadata)
    app.add_route("GET", "/v2/models/{name}/versions/{version}", model_metadata)
    app.add_route("GET", "/v2/models/{name}/ready", model_ready)
    app.add_route("GET", "/v2/models/{name}/versions/{version}/ready", model_ready)
    app.add_route("GET", "/metrics", prometheus, public=True)
    return app
