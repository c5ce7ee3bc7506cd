"""The payload log's pipelined sender against a real HTTP/1.1 sink (asyncio and httptools in a thread of the
test): every event arrives once, in the order recorded, with KServe's CloudEvents headers, several requests to
a read; a sink that ends a connection mid-pipeline, politely (`Connection: close`) or by dropping it, or
closes idle connections, or never answers, costs at most the events it may have taken, each counted."""

from __future__ import annotations

import asyncio
import threading
import time

import httptools
import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_binary_event

from serving_helpers import HOST

from slimserve.serving.metrics import ServerMetrics
from slimserve.serving.observability import PayloadLogSettings
from slimserve.serving.payload_log import MAX_PIPELINED, REQUEST_EVENT, RESPONSE_EVENT, PayloadLogger

MODEL = "digits-mlp"
SOURCE = "/apis/slimserve.io/v1alpha1/namespaces/team-a/modelservices/digits"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"


class PipelineSink:
    """A real HTTP/1.1 server keeping every request it takes: (connection number, headers, body).

    `close_after` ends each connection after that many replies: with `Connection: close` on the last (polite,
    the rest of the pipeline not taken) or by taking the next request and resetting the connection (abrupt).
    `close_when_idle` closes a connection once it has answered all it read; `answering` False takes requests and
    never answers."""

    def __init__(self, close_after: int | None = None, polite: bool = True, close_when_idle: bool = False) -> None:
        self.close_after, self.polite, self.close_when_idle = close_after, polite, close_when_idle
        self.answering = True
        self.taken: list[tuple[int, dict[str, str], bytes]] = []
        self.answered = 0
        self.connections = 0
        self.reads_with_several = 0  # reads that completed more than one request: the client pipelined
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(self.loop.create_server(lambda: _Connection(self), HOST, 0))
        self.url = f"http://{HOST}:{self.server.sockets[0].getsockname()[1]}/events"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def ids(self) -> list[tuple[str, str]]:
        return [(headers["ce-id"], headers["ce-type"]) for _number, headers, _body in self.taken]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.server.close()


class _Connection(asyncio.Protocol):
    def __init__(self, sink: PipelineSink) -> None:
        self.sink, self.number, self.answered, self.ended = sink, sink.connections, 0, False
        sink.connections += 1
        self.parser = httptools.HttpRequestParser(self)
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.completed_in_read = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.completed_in_read = 0
        if not self.ended:
            self.parser.feed_data(data)
        self.sink.reads_with_several += self.completed_in_read > 1
        if self.sink.close_when_idle and not self.ended and self.completed_in_read and self.answered:
            self.ended = True
            self.transport.close()  # no `Connection: close`: as a server's idle timeout does

    def on_message_begin(self) -> None:
        self.headers, self.body = {}, []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.ended:  # after the end of a connection: not taken
            return
        self.completed_in_read += 1
        sink = self.sink
        sink.taken.append((self.number, self.headers, b"".join(self.body)))
        if not sink.answering:
            return
        if sink.close_after is not None and self.answered == sink.close_after:  # abrupt: taken, then reset
            self.ended = True
            self.transport.abort()
            return
        self.answered += 1
        sink.answered += 1
        last = sink.polite and sink.close_after is not None and self.answered == sink.close_after
        self.transport.write(OK + (b"connection: close\r\n\r\n" if last else b"\r\n"))
        if last:
            self.ended = True
            self.transport.close()


def logger_for(sink: PipelineSink, timeout_s: float = 5.0) -> tuple[PayloadLogger, ServerMetrics]:
    metrics = ServerMetrics()
    settings = PayloadLogSettings(sink.url, timeout_s=timeout_s, service="digits", namespace="team-a")
    return PayloadLogger(settings, metrics), metrics


def outcome(metrics: ServerMetrics, name: str) -> float:
    return metrics.registry.get_sample_value("slimserve_payload_log_events_total", {"outcome": name}) or 0


def wait_for(metrics: ServerMetrics, settled: int, timeout_s: float = 20) -> None:
    """Until `settled` events are counted sent or failed."""
    deadline = time.monotonic() + timeout_s
    while outcome(metrics, "sent") + outcome(metrics, "failed") < settled:
        assert time.monotonic() < deadline, (outcome(metrics, "sent"), outcome(metrics, "failed"))
        time.sleep(0.01)


def record_all(logger: PayloadLogger, count: int, prefix: str) -> list[tuple[str, str]]:
    """`count` requests recorded at once, each with its response: the events in the order recorded."""
    for n in range(count):
        logger.record(f"{prefix}-{n}", MODEL, b'{"in": %d}' % n, "application/json", b'{"out": %d}' % n,
                      "application/json")
    return [(f"{prefix}-{n}", kind) for n in range(count) for kind in (REQUEST_EVENT, RESPONSE_EVENT)]


def assert_once_in_order(taken: list[tuple[str, str]], recorded: list[tuple[str, str]]) -> None:
    assert len(set(taken)) == len(taken), "an event arrived twice"
    position = {event: n for n, event in enumerate(recorded)}
    assert [position[event] for event in taken] == sorted(position[event] for event in taken)


@pytest.fixture
def sinks():
    made = []
    yield lambda **options: made.append(PipelineSink(**options)) or made[-1]
    for sink in made:
        sink.close()


def test_events_are_pipelined_once_each_in_order_with_kserve_headers(sinks):
    sink = sinks()
    logger, metrics = logger_for(sink)
    recorded = record_all(logger, 3 * MAX_PIPELINED, "kserve")
    wait_for(metrics, len(recorded))
    logger.close()
    assert outcome(metrics, "sent") == len(recorded) and outcome(metrics, "failed") == 0
    assert sink.ids() == recorded and sink.connections == 1
    assert sink.reads_with_several > 0  # requests written without waiting for the replies before them
    for n, (_number, headers, body) in enumerate(sink.taken[:4]):
        event = from_binary_event(HTTPMessage(headers, body))
        assert (event.get_id(), event.get_type()) == recorded[n]
        assert event.get_source() == SOURCE and event.get_specversion() == "1.0" and headers["ce-time"]
        assert headers["content-type"] == "application/json" and headers["host"] == sink.url.split("/")[2]
        assert (event.get_extension("inferenceservicename"), event.get_extension("namespace")) == ("digits", "team-a")
        assert (event.get_extension("component"), event.get_extension("endpoint")) == ("predictor", "default")
        assert event.get_data() == {"in" if n % 2 == 0 else "out": n // 2}


def test_a_sink_that_closes_politely_mid_pipeline_gets_the_rest_on_a_new_connection(sinks):
    sink = sinks(close_after=10, polite=True)
    logger, metrics = logger_for(sink)
    recorded = record_all(logger, 2 * MAX_PIPELINED, "polite")
    wait_for(metrics, len(recorded))
    logger.close()
    assert outcome(metrics, "failed") == 0 and outcome(metrics, "sent") == len(recorded)
    assert sink.ids() == recorded  # each once, in order: what the sink did not take went again
    assert sink.connections >= len(recorded) // 10


def test_a_sink_that_drops_the_connection_mid_pipeline_costs_only_what_it_may_have_taken(sinks):
    sink = sinks(close_after=10, polite=False)
    logger, metrics = logger_for(sink)
    recorded = record_all(logger, 2 * MAX_PIPELINED, "abrupt")
    wait_for(metrics, len(recorded))
    sent, failed = outcome(metrics, "sent"), outcome(metrics, "failed")
    assert sent == sink.answered and sent + failed == len(recorded)
    assert failed >= sink.connections - 1 >= 1  # at least the request each reset took unanswered
    assert_once_in_order(sink.ids(), recorded)  # never sent twice: unanswered events may have been taken
    sink.close_after = None
    after = record_all(logger, 1, "after")
    wait_for(metrics, len(recorded) + 2)
    logger.close()
    assert sink.ids()[-2:] == after and outcome(metrics, "sent") == sent + 2  # a new connection takes them


def test_a_sink_that_closes_idle_connections_loses_nothing(sinks):
    sink = sinks(close_when_idle=True)
    logger, metrics = logger_for(sink)
    recorded = []
    for n in range(4):  # each after the sink closed the connection the one before went on
        recorded += record_all(logger, 1, f"idle{n}")
        wait_for(metrics, len(recorded))
    logger.close()
    assert outcome(metrics, "failed") == 0 and sink.ids() == recorded and sink.connections == 4


def test_a_sink_that_never_answers_fails_its_events_after_the_timeout_then_recovers(sinks):
    sink = sinks()
    sink.answering = False
    logger, metrics = logger_for(sink, timeout_s=0.3)
    started = time.monotonic()
    record_all(logger, 1, "unanswered")
    assert time.monotonic() - started < 0.3  # recording never waits for the sink
    wait_for(metrics, 2)
    assert outcome(metrics, "failed") == 2 and time.monotonic() - started < 5  # bounded by the timeout, not hung
    sink.answering = True
    record_all(logger, 1, "answered")
    wait_for(metrics, 4)
    logger.close()
    assert outcome(metrics, "sent") == 2 and sink.ids()[-2:] == [("answered-0", REQUEST_EVENT),
                                                                 ("answered-0", RESPONSE_EVENT)]
