"""Payload logging: inference requests and responses as CloudEvents to an HTTP sink, in KServe's logger format.

Each logged request makes up to two events, binary content mode (attributes in `ce-*` headers, the payload
as the body): `org.kubeflow.serving.inference.request` and `.response`, both with `ce-id` = the request id,
and the extensions KServe's logger sets (`inferenceservicename`, `namespace`, `component`, `endpoint`), so a
sink written for KServe reads them as they are. REST payloads go as received and sent (JSON or the binary
tensor extension, with their content type); gRPC and gRPC-Web ones as the bytes of the
`inference.ModelInferRequest` received and the `ModelInferResponse` sent (`application/x-protobuf`).

As KServe's logger, which sits behind whatever authenticates: a request refused by auth is not logged; one
that fails is logged without a response.

Inference never waits for the sink: the endpoint samples the request (by request id, so a request and its
response are logged together or not at all), then puts references to the payloads' bytes on a bounded
queue - no copy, no encoding on the event loop. One sender thread posts them over a kept-alive connection,
each socket operation bounded by `timeout_s`; an event's headers are the CloudEvents SDK's for its type and
content type, made once, with its id and time filled in. A full queue drops the event; a refused, failing or
slow sink fails it; both are counted (`slimserve_payload_log_events_total{outcome}`), never a request's error.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

from cloudevents.core.bindings.http import to_binary_event
from cloudevents.core.v1.event import CloudEvent

from slimserve.serving.metrics import ServerMetrics
from slimserve.serving.observability import PayloadLogSettings

log = logging.getLogger(__name__)

REQUEST_EVENT = "org.kubeflow.serving.inference.request"
RESPONSE_EVENT = "org.kubeflow.serving.inference.response"
MAX_QUEUED = 10_000  # events waiting for the sender; past this, new ones are dropped
MAX_SINK_REPLY_BYTES = 64 * 1024  # read (and ignore) at most this much of a sink's reply
_SAMPLING_SCALE = 2**64


def sampled(request_id: str, rate: float) -> bool:
    """Whether a request is logged: a hash of its id below `rate`, so its request and response agree."""
    if rate >= 1:
        return True
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest) < rate * _SAMPLING_SCALE


@dataclass(frozen=True, slots=True)
class _Queued:
    event_type: str
    request_id: str
    model: str
    payload: bytes
    content_type: str
    time_s: float  # when the request was answered (time.time())


class PayloadLogger:
    """`record(...)` one inference request and its response (None when it failed); sends from its own thread."""

    def __init__(self, settings: PayloadLogSettings, metrics: ServerMetrics, max_queued: int = MAX_QUEUED) -> None:
        self.settings = settings
        self._events = metrics.payload_log_events
        self._log_requests = settings.mode in ("all", "request")
        self._log_responses = settings.mode in ("all", "response")
        self._queue: queue.Queue[_Queued | None] = queue.Queue(max_queued)
        self._sink = _Sink(settings.url, settings.timeout_s)
        self._source = _source(settings)
        self._headers: dict[tuple[str, str, str], dict[str, str]] = {}  # the sender's, by type, content type, model
        self._sender = threading.Thread(target=self._send_until_closed, name="slimserve-payload-log", daemon=True)
        self._sender.start()

    def record(
        self, request_id: str, model: str, request: bytes, request_type: str, response: bytes | None,
        response_type: str,
    ) -> None:
        """Queue what the mode asks for of one request: the payloads' bytes as received and sent, never copied."""
        if not sampled(request_id, self.settings.sample_rate):
            return
        now = time.time()
        if self._log_requests:
            self._put(_Queued(REQUEST_EVENT, request_id, model, request, request_type, now))
        if self._log_responses and response is not None:
            self._put(_Queued(RESPONSE_EVENT, request_id, model, response, response_type, now))

    @property
    def queued(self) -> int:
        """Events waiting for the sender."""
        return self._queue.qsize()

    def _put(self, event: _Queued) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._events.labels("dropped").inc()

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (for at most about `timeout_s`), then stop the sender."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            pass
        self._sender.join(timeout_s)

    def _send_until_closed(self) -> None:
        while (event := self._queue.get()) is not None:
            try:
                status = self._sink.post(*self._encode(event))
            except Exception as error:  # noqa: BLE001 - a sink failure must never end the sender
                self._events.labels("failed").inc()
                log.debug("payload log: event %s not sent: %s", event.request_id, error)
                continue
            self._events.labels("sent" if 200 <= status < 300 else "failed").inc()

    def _encode(self, event: _Queued) -> tuple[dict[str, str], bytes]:
        kind = (event.event_type, event.content_type, event.model)
        template = self._headers.get(kind)
        if template is None:
            template = self._headers[kind] = self._template(*kind)
        headers = dict(template)
        headers[_ID_HEADER] = event.request_id
        headers[_TIME_HEADER] = _rfc3339(event.time_s)
        return headers, event.payload

    def _template(self, event_type: str, content_type: str, model: str) -> dict[str, str]:
        """The binary-mode headers of an event of this kind, as the CloudEvents SDK makes and checks them."""
        attributes = {
            "id": "template", "source": self._source, "type": event_type, "datacontenttype": content_type,
            "inferenceservicename": self.settings.service or model, "namespace": self.settings.namespace,
            "component": "predictor", "endpoint": "default",
        }
        return to_binary_event(CloudEvent(attributes, b"")).headers


_ID_HEADER, _TIME_HEADER = "ce-id", "ce-time"


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _source(settings: PayloadLogSettings) -> str:
    """ce-source: the ModelService the server belongs to (its API path), or the server alone."""
    if settings.service and settings.namespace:
        return f"/apis/slimserve.io/v1alpha1/namespaces/{settings.namespace}/modelservices/{settings.service}"
    return "/slimserve"


class _Sink:
    """One kept-alive HTTP(S) connection to the sink, opened again after any failure."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout_s = timeout_s
        self._connection: http.client.HTTPConnection | None = None

    def post(self, headers: dict[str, str], body: bytes) -> int:
        connection = self._connection or self._connect()
        try:
            connection.request("POST", self._path, body, headers)
            reply = connection.getresponse()
            reply.read(MAX_SINK_REPLY_BYTES)
            if not reply.isclosed():  # a longer reply than we read: do not reuse the connection
                connection.close()
                self._connection = None
            return reply.status
        except Exception:
            connection.close()
            self._connection = None
            raise

    def _connect(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        self._connection = kind(self._host, self._port, timeout=self._timeout_s)
        return self._connection
