"""A real HTTP sink for payload logging: it keeps every CloudEvent POSTed to it, for the tests to read back."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.core.bindings.http import HTTPMessage, from_binary_event

from tests.serving.serving_helpers import HOST


class Sink:
    """A real HTTP server that keeps every POST it gets (headers lower-cased, body); `hold` makes it stall."""

    def __init__(self) -> None:
        self.events: list[tuple[dict[str, str], bytes]] = []
        self.hold = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if sink.stalling:
                    sink.hold.wait()
                sink.events.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.stalling = False
        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{HOST}:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def by_id(self, request_id: str) -> dict[str, object]:
        """The CloudEvents of one request id, parsed by the CloudEvents SDK, by type."""
        found = {}
        for headers, body in list(self.events):
            event = from_binary_event(HTTPMessage(headers, body))
            if event.get_id() == request_id:
                found[event.get_type()] = (event, headers)
        return found

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def events_of(sink: Sink, request_id: str, types: int = 2, timeout_s: float = 10) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = sink.by_id(request_id)
        if len(found) >= types:
            return found
        time.sleep(0.02)
    raise AssertionError(f"{types} events of {request_id!r} did not arrive: {sink.by_id(request_id)}")
