"""The operator's Prometheus queries are bounded: an answer too large or too slow, or one Prometheus refuses, is a
PrometheusUnavailable naming why (an HTTP server on loopback answers as each case needs)."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from slimserve.controller.prometheus import PrometheusUnavailable, instant_query

VECTOR = {"status": "success", "data": {"resultType": "vector",
                                        "result": [{"metric": {"code": "503"}, "value": [1.0, "4"]}]}}


class Answers(BaseHTTPRequestHandler):
    asked: list[dict] = []
    released = threading.Event()  # the slow answer waits for it (the test sets it once the client gave up)

    def do_GET(self):  # noqa: N802 - http.server's name
        Answers.asked.append(parse_qs(urlsplit(self.path).query))
        case = parse_qs(urlsplit(self.path).query)["query"][0]
        if case == "slow":
            Answers.released.wait(30)
        status, body = {
            "vector": (200, json.dumps(VECTOR).encode()),
            "large": (200, b" " * (2 << 20)),
            "refused": (400, json.dumps({"status": "error", "errorType": "bad_data",
                                         "error": "parse error"}).encode()),
            "matrix": (200, json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}}).encode()),
            "slow": (200, json.dumps(VECTOR).encode()),
        }[case]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if case != "large":  # streamed without a length: the bound is counted as it arrives
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def prometheus_address():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_an_instant_vector_is_returned_and_prometheus_is_told_the_timeout(prometheus_address):
    assert asyncio.run(instant_query(prometheus_address, "vector", timeout_s=5)) == VECTOR["data"]["result"]
    assert Answers.asked[-1]["timeout"] == ["5s"]


@pytest.mark.parametrize("case, why", [
    ("large", "more than 1048576 bytes"),
    ("refused", "HTTP 400: bad_data: parse error"),
    ("matrix", "expected an instant vector"),
])
def test_an_answer_that_cannot_be_used_is_refused_saying_why(prometheus_address, case, why):
    with pytest.raises(PrometheusUnavailable, match=why):
        asyncio.run(instant_query(prometheus_address, case))


def test_a_slow_answer_is_given_up_at_the_timeout(prometheus_address):
    try:  # had the client waited for the answer, it would have got it (a vector) and raised nothing
        with pytest.raises(PrometheusUnavailable, match="no answer within 0.5s"):
            asyncio.run(instant_query(prometheus_address, "slow", timeout_s=0.5))
    finally:
        Answers.released.set()


def test_nothing_listening_is_unavailable():
    with pytest.raises(PrometheusUnavailable, match="ConnectError"):
        asyncio.run(instant_query("http://127.0.0.1:9", "vector", timeout_s=2))
