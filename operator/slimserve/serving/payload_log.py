"""Payload logging: inference requests and responses as CloudEvents to an HTTP sink, in KServe's logger format.

Each logged request makes up to two events, binary content mode (attributes in `ce-*` headers, the payload
as the body), one HTTP request each: `org.kubeflow.serving.inference.request` and `.response`, both with
`ce-id` = the request id, and the extensions KServe's logger sets (`inferenceservicename`, `namespace`,
`component`, `endpoint`), so a sink written for KServe reads them as they are. REST payloads go as received and
sent (JSON or the binary tensor extension, with their content type); gRPC and gRPC-Web ones as the bytes of the
`inference.ModelInferRequest` received and the `ModelInferResponse` sent (`application/x-protobuf`).

As KServe's logger, which sits behind whatever authenticates: a request refused by auth is not logged; one
that fails is logged without a response.

Inference never waits for the sink: the endpoint samples the request (by request id, so a request and its
response are logged together or not at all), appends references to the payloads' bytes to a bounded deque and
wakes the sender if it sleeps - no copy and no encoding on the event loop. One sender thread, once woken, lets
events gather for `GATHER_S`, takes them and writes them as pipelined HTTP/1.1 requests on one kept-alive
connection, in one scatter write (the payloads referenced, not copied), then counts the replies as `httptools`
parses them: per event, one small head made from its kind's template (the CloudEvents SDK's headers, made once)
instead of a request and a reply round trip. Each socket operation is bounded by `timeout_s`.

Delivery is at most once. A sink that ends the connection with `Connection: close` has, by HTTP's rules, not
taken the requests after that reply: they go again on a new connection. One that drops the connection
mid-pipeline may or may not have taken the unanswered ones: they count as failed, never sent twice. A full
queue drops the new event; a refused, failing or slow sink fails it; all are counted
(`slimserve_payload_log_events_total{outcome}`), never a request's error.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import select
import socket
import ssl
import threading
import time
from collections import deque
from urllib.parse import urlsplit

import httptools
from cloudevents.core.bindings.http import to_binary_event
from cloudevents.core.v1.event import CloudEvent

from slimserve.serving.metrics import ServerMetrics
from slimserve.serving.observability import PayloadLogSettings

log = logging.getLogger(__name__)

REQUEST_EVENT = "org.kubeflow.serving.inference.request"
RESPONSE_EVENT = "org.kubeflow.serving.inference.response"
MAX_QUEUED = 5_000  # logged requests (up to two events each) waiting for the sender; past this, new ones are dropped
MAX_PIPELINED = 128  # events written before their replies are read (one more when a request's two straddle it)
MAX_PIPELINED_BYTES = 4 * 1024 * 1024  # payload bytes past which no more requests join a pipeline
GATHER_S = 0.01  # how long the sender, woken by an event, waits for others to join it
MAX_SINK_REPLY_BYTES = 64 * 1024  # read (and ignore) at most this much of a sink's reply, per event
_SAMPLING_SCALE = 2**64
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")  # what may go into a header as it is: no CR, LF or other controls
_STARTED_EVENTS = ("ce-id", "ce-time")  # the headers of each event's own; the rest come from its kind's template


def sampled(request_id: str, rate: float) -> bool:
    """Whether a request is logged: a hash of its id below `rate`, so its request and response agree."""
    if rate >= 1:
        return True
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest) < rate * _SAMPLING_SCALE


# A logged request: (request id, model, time.time() when it was answered, the request's bytes and content type,
# the response's bytes and content type); bytes None where the mode leaves that event out or the request failed.
_Logged = tuple[str, str, float, bytes | None, str, bytes | None, str]


class PayloadLogger:
    """`record(...)` one inference request and its response (None when it failed); sends from its own thread."""

    def __init__(self, settings: PayloadLogSettings, metrics: ServerMetrics, max_queued: int = MAX_QUEUED) -> None:
        self.settings = settings
        self._sent, self._failed, self._dropped = (metrics.payload_log_events.labels(outcome)
                                                   for outcome in ("sent", "failed", "dropped"))
        self._log_requests = settings.mode in ("all", "request")
        self._log_responses = settings.mode in ("all", "response")
        self._max_queued = max_queued
        self._pending: deque[_Logged] = deque()  # appended on the event loop, taken by the sender
        self._wake = threading.Event()
        self._closing = False
        self._sink = _Sink(settings.url, settings.timeout_s)
        self._heads = _Heads(settings, self._sink.request_line)
        self._sender = threading.Thread(target=self._send_until_closed, name="slimserve-payload-log", daemon=True)
        self._sender.start()

    def record(
        self, request_id: str, model: str, request: bytes, request_type: str, response: bytes | None,
        response_type: str,
    ) -> None:
        """Queue what the mode asks for of one request: the payloads' bytes as received and sent, never copied."""
        if not sampled(request_id, self.settings.sample_rate):
            return
        logged = (request_id, model, time.time(), request if self._log_requests else None, request_type,
                  response if self._log_responses else None, response_type)
        if len(self._pending) >= self._max_queued:
            self._dropped.inc(_events(logged))
            return
        self._pending.append(logged)
        if not self._wake.is_set():  # the sender clears it before it takes: a set one is still to be seen
            self._wake.set()

    @property
    def queued(self) -> int:
        """Logged requests waiting for the sender."""
        return len(self._pending)

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (for at most about `timeout_s`), then stop the sender."""
        self._closing = True
        self._wake.set()
        self._sender.join(timeout_s)
        self._sink.close()

    def _send_until_closed(self) -> None:
        while not self._closing or self._pending:
            self._wake.wait()
            self._wake.clear()
            if len(self._pending) < MAX_PIPELINED // 2 and not self._closing:
                time.sleep(GATHER_S)  # let a few more gather: one write and one wake-up for them all
            while self._pending:
                self._send(self._messages())

    def _messages(self) -> list[tuple[bytes, bytes]]:
        """(head, body) of the oldest events, up to about MAX_PIPELINED of them and MAX_PIPELINED_BYTES of payload
        (a request's events stay together; the id and time they share are made once)."""
        messages: list[tuple[bytes, bytes]] = []
        size = 0
        pending, heads = self._pending, self._heads
        while pending and len(messages) < MAX_PIPELINED and (not messages or size < MAX_PIPELINED_BYTES):
            request_id, model, time_s, request, request_type, response, response_type = logged = pending.popleft()
            try:
                own = heads.own(request_id, time_s)
            except ValueError as error:  # a request id that may not go on the wire as it is
                self._failed.inc(_events(logged))
                log.debug("payload log: events of %r not sent: %s", request_id, error)
                continue
            for event_type, payload, content_type in ((REQUEST_EVENT, request, request_type),
                                                      (RESPONSE_EVENT, response, response_type)):
                if payload is None:
                    continue
                try:
                    messages.append((heads.head(event_type, content_type, model, own, len(payload)), payload))
                    size += len(payload)
                except ValueError as error:  # a content type or model that may not go on the wire as it is
                    self._failed.inc()
                    log.debug("payload log: event of %r not sent: %s", request_id, error)
        return messages

    def _send(self, messages: list[tuple[bytes, bytes]]) -> None:
        while messages:
            try:
                statuses, untaken = self._sink.exchange(messages)
            except OSError as error:  # unreachable, reset, timed out: the unanswered ones may have been taken
                statuses, untaken = getattr(error, "statuses", []), 0
                self._failed.inc(len(messages) - len(statuses))
                log.debug("payload log: %d of %d events not sent: %s", len(messages) - len(statuses), len(messages),
                          error)
            ok = sum(200 <= status < 300 for status in statuses)
            self._sent.inc(ok)
            self._failed.inc(len(statuses) - ok)
            # A sink that closed with `Connection: close` took nothing after that reply: send the rest again.
            messages = messages[len(messages) - untaken:] if untaken else []


def _events(logged: _Logged) -> int:
    return (logged[3] is not None) + (logged[5] is not None)


class _Heads:
    """Each event's HTTP request head: its kind's template (request line, Host, the CloudEvents SDK's headers for
    its type, content type and model), then its own id, time and length."""

    def __init__(self, settings: PayloadLogSettings, request_line: bytes) -> None:
        self._settings = settings
        self._source = _source(settings)
        self._request_line = request_line
        self._templates: dict[tuple[str, str, str], bytes] = {}

    def own(self, request_id: str, time_s: float) -> bytes:
        """The headers of a request's events that are theirs alone: ce-id and ce-time."""
        if not _HEADER_VALUE.fullmatch(request_id):
            raise ValueError(f"request id {request_id!r} cannot be a header value")
        return b"ce-id: %s\r\nce-time: %s\r\n" % (request_id.encode(), _rfc3339(time_s))

    def head(self, event_type: str, content_type: str, model: str, own: bytes, length: int) -> bytes:
        kind = (event_type, content_type, model)
        template = self._templates.get(kind)
        if template is None:
            template = self._templates[kind] = self._template(*kind)
        return b"%s%scontent-length: %d\r\n\r\n" % (template, own, length)

    def _template(self, event_type: str, content_type: str, model: str) -> bytes:
        attributes = {
            "id": "template", "source": self._source, "type": event_type, "datacontenttype": content_type,
            "inferenceservicename": self._settings.service or model, "namespace": self._settings.namespace,
            "component": "predictor", "endpoint": "default",
        }
        headers = to_binary_event(CloudEvent(attributes, b"")).headers
        lines = [f"{name}: {value}\r\n" for name, value in headers.items() if name not in _STARTED_EVENTS]
        for line in lines:
            if not _HEADER_VALUE.fullmatch(line[:-2]):
                raise ValueError(f"header {line[:-2]!r} cannot go on the wire as it is")
        return self._request_line + "".join(lines).encode()


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> bytes:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)).encode()


def _rfc3339(seconds: float) -> bytes:
    """RFC 3339 in UTC to the microsecond, as the CloudEvents SDK writes ce-time."""
    whole = int(seconds)
    return b"%s.%06dZ" % (_second(whole), int((seconds - whole) * 1_000_000))


def _source(settings: PayloadLogSettings) -> str:
    """ce-source: the ModelService the server belongs to (its API path), or the server alone."""
    if settings.service and settings.namespace:
        return f"/apis/slimserve.io/v1alpha1/namespaces/{settings.namespace}/modelservices/{settings.service}"
    return "/slimserve"


class _Replies:
    """The sink's replies to a pipeline of requests, parsed by `httptools`: their statuses, in order, and whether
    the sink said it closes the connection after the last of them."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.closing = False
        self.started = False  # a reply's head has arrived, its body not all of it
        self._parser = httptools.HttpResponseParser(self)

    def feed(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_headers_complete(self) -> None:
        self.started = True

    def on_message_complete(self) -> None:
        self.started = False
        self.statuses.append(self._parser.get_status_code())
        self.closing = not self._parser.should_keep_alive()


class _Sink:
    """One kept-alive HTTP(S) connection to the sink, opened again after any failure or close."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port or (443 if self._https else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        authority = parts.netloc.rpartition("@")[2]
        self.request_line = f"POST {path} HTTP/1.1\r\nhost: {authority}\r\n".encode()
        self._timeout_s = timeout_s
        self._tls = ssl.create_default_context() if self._https else None
        self._socket: socket.socket | None = None

    def exchange(self, messages: list[tuple[bytes, bytes]]) -> tuple[list[int], int]:
        """Write `messages` (head, body) pipelined and read their replies: the statuses of those answered, and how
        many after them the sink did not take (it closed with `Connection: close` first). An OSError carries the
        statuses of the replies that came before it (`.statuses`)."""
        replies = _Replies()
        try:
            sock = self._usable() or self._connect()
            _write(sock, [part for message in messages for part in message if part])
            limit = MAX_SINK_REPLY_BYTES * len(messages)
            while len(replies.statuses) < len(messages) and not replies.closing:
                data = sock.recv(65536)
                if not data:
                    if replies.started:  # a reply whose body runs to the end of the connection
                        replies.on_message_complete()
                        replies.closing = True
                        break
                    raise ConnectionResetError("the sink closed the connection")
                limit -= len(data)
                if limit < 0:
                    raise ConnectionAbortedError("the sink's replies are longer than payload logging reads")
                replies.feed(data)
        except httptools.HttpParserError as error:
            if not replies.closing:  # bytes after the reply that closes the connection are no one's concern
                self.close()
                failure = ConnectionAbortedError(f"the sink's reply: {error}")
                failure.statuses = replies.statuses  # type: ignore[attr-defined]
                raise failure from error
        except OSError as error:
            self.close()
            error.statuses = replies.statuses  # type: ignore[attr-defined]
            raise
        if replies.closing:
            self.close()
            return replies.statuses, len(messages) - len(replies.statuses)
        return replies.statuses, 0

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _usable(self) -> socket.socket | None:
        """The kept-alive connection, unless the sink closed it while idle (it reads as ready: EOF or stray
        bytes), when writing on it would lose a pipeline the sink never saw."""
        sock = self._socket
        if sock is None or not select.select([sock], [], [], 0)[0]:
            return sock
        sock.setblocking(False)
        try:
            sock.recv(1)  # the end of the connection, or bytes no request asked for
        except (ssl.SSLWantReadError, BlockingIOError):  # TLS records without data (session tickets)
            return sock
        except OSError:
            pass
        finally:
            sock.settimeout(self._timeout_s)
        self.close()
        return None

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self._host, self._port), timeout=self._timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=self._host)
        self._socket = sock
        return sock


def _write(sock: socket.socket, parts: list[bytes]) -> None:
    """All of `parts`, in order: one gathering write where the socket has one (the payloads are not copied)."""
    if isinstance(sock, ssl.SSLSocket):  # TLS encrypts into its own buffer anyway
        sock.sendall(b"".join(parts))
        return
    views = [memoryview(part) for part in parts]
    first = 0
    while first < len(views):
        sent = sock.sendmsg(views[first:first + 1024])  # IOV_MAX
        while first < len(views) and sent >= len(views[first]):
            sent -= len(views[first])
            first += 1
        if sent:
            views[first] = views[first][sent:]
