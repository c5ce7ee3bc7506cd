"""Payload logging: inference requests and responses as CloudEvents to an HTTP sink, in KServe's logger format.

Each logged request makes up to two events, binary content mode (attributes in `ce-*` headers, the payload
as the body): `org.kubeflow.serving.inference.request` and `.response`, both with `ce-id` = the request id,
and the extensions KServe's logger sets (`inferenceservicename`, `namespace`, `component`, `endpoint`), so a
sink written for KServe reads them as they are. REST payloads go as received and sent (JSON or the binary
tensor extension, with their content type); gRPC and gRPC-Web ones as the serialized
`inference.ModelInferRequest` / `ModelInferResponse` (`application/x-protobuf`).

Inference never waits for the sink: the endpoint samples the request (by request id, so a request and its
response are logged together or not at all), then puts references to the payloads on a bounded queue - no
copy, no encoding on the event loop. One sender thread encodes and posts them over a kept-alive connection,
each socket operation bounded by `timeout_s`. A full queue drops the event; a refused, failing or slow sink
fails it; both are counted (`slimserve_payload_log_events_total{outcome}`), never a request's error.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any
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


@dataclass(frozen=True)
class _Queued:
    event_type: str
    request_id: str
    model: str
    payload: Any  # bytes, or a protobuf message serialized by the sender
    content_type: str


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
        self._sender = threading.Thread(target=self._send_until_closed, name="slimserve-payload-log", daemon=True)
        self._sender.start()

    def record(
        self, request_id: str, model: str, request: Any, request_type: str, response: Any, response_type: str,
    ) -> None:
        """Queue what the mode asks for of one request; payloads are bytes or protobuf messages, never copied."""
        if not sampled(request_id, self.settings.sample_rate):
            return
        if self._log_requests:
            self._put(_Queued(REQUEST_EVENT, request_id, model, request, request_type))
        if self._log_responses and response is not None:
            self._put(_Queued(RESPONSE_EVENT, request_id, model, response, response_type))

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
        payload = event.payload if isinstance(event.payload, bytes) else event.payload.SerializeToString()
        attributes = {
            "id": event.request_id, "source": self._source, "type": event.event_type,
            "datacontenttype": event.content_type,
            "inferenceservicename": self.settings.service or event.model, "namespace": self.settings.namespace,
            "component": "predictor", "endpoint": "default",
        }
        message = to_binary_event(CloudEvent(attributes, payload))
        return message.headers, message.body


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
