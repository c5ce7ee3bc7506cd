"""Generation requests of a real `slimserve serve` process traced into a real OpenTelemetry Collector and
payload-logged to a real CloudEvents sink, as OIP infer requests are: a whole answer logged as sent, a stream
logged once when it ends with its text and token counts, a client that leaves logged as disconnected, a refused
request logged without a response; each a server span under the caller's traceparent with its queue_wait."""

from __future__ import annotations

import http.client
import json
import secrets
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from serving_fixtures import save_random_llama  # noqa: E402
from serving_helpers import ServerProcess, post_json, request  # noqa: E402

from slimserve.serving.generation.observed import (  # noqa: E402
    CHAT_SPAN, COMPLETIONS_SPAN, DISCONNECTED, GENERATE_STREAM_SPAN, STREAM_CONTENT_TYPE,
)
from slimserve.serving.payload_log import REQUEST_EVENT, RESPONSE_EVENT  # noqa: E402
from slimserve.serving.tracing import QUEUE_WAIT_SPAN  # noqa: E402
from tests.otelcol.collector import otel_collector  # noqa: E402,F401 - the session's collector
from tests.serving.payload_sink import Sink, events_of  # noqa: E402

MODEL = "observed-llama"


@pytest.fixture(scope="module")
def sink():
    with Sink() as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory, sink, otel_collector):  # noqa: F811
    directory = save_random_llama(tmp_path_factory.mktemp("decoder") / MODEL)
    process = ServerProcess(
        f"file://{directory}", tmp_path_factory.mktemp("logs"), "--payload-log-url", sink.url,
        "--tracing-endpoint", otel_collector.endpoint, "--service-name", "observed",
        env={"OTEL_BSP_SCHEDULE_DELAY": "100"},
    ).start()
    yield process
    process.stop()


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def post(server, path: str, document: dict, request_id: str, header: str) -> tuple[int, bytes, bytes]:
    sent = json.dumps(document).encode()
    status, _headers, body = request(server.http_url, "POST", path, sent, {
        "Content-Type": "application/json", "X-Request-Id": request_id, "traceparent": header})
    return status, sent, body


def server_span(otel_collector, trace_id: str, parent: str) -> tuple[dict, list[str]]:  # noqa: F811
    """The request's server span under the caller's span, and its children's names."""
    def arrived(spans: list[dict]) -> bool:
        return any(span["traceId"] == trace_id and span.get("parentSpanId") == parent for span in spans)

    spans = otel_collector.wait_for_spans(arrived)
    (span,) = [s for s in spans if s["traceId"] == trace_id and s.get("parentSpanId") == parent]
    return span, [s["name"] for s in spans if s.get("parentSpanId") == span["spanId"]]


def attributes(span: dict) -> dict[str, object]:
    found = {}
    for attribute in span.get("attributes", []):
        value = attribute["value"]
        found[attribute["key"]] = (int(value["intValue"]) if "intValue" in value else value.get("stringValue")
                                   if "stringValue" in value else [v.get("stringValue") for v in value["arrayValue"]["values"]])
    return found


def test_a_whole_completion_is_logged_as_sent_and_traced_with_its_token_counts(server, sink, otel_collector):  # noqa: F811
    header, trace_id, parent = traceparent()
    document = {"model": MODEL, "prompt": "w1 w2 w3", "max_tokens": 5, "temperature": 0}
    status, sent, answer = post(server, "/v1/completions", document, "whole-1", header)
    assert status == 200
    events = events_of(sink, "whole-1")
    assert events[REQUEST_EVENT][0].get_data() == json.loads(sent)
    assert events[RESPONSE_EVENT][0].get_data() == json.loads(answer)  # the answer as sent, usage and all
    assert events[RESPONSE_EVENT][0].get_attributes()["inferenceservicename"] == "observed"
    span, children = server_span(otel_collector, trace_id, parent)
    assert span["name"] == COMPLETIONS_SPAN and QUEUE_WAIT_SPAN in children
    assert attributes(span)["gen_ai.usage.input_tokens"] == 3
    assert attributes(span)["gen_ai.usage.output_tokens"] == 5
    assert attributes(span)["gen_ai.response.finish_reasons"] == ["length"]


def test_a_stream_is_logged_once_when_it_ends_with_its_text_and_counts(server, sink, otel_collector):  # noqa: F811
    header, trace_id, parent = traceparent()
    document = {"text_input": "w4 w5", "parameters": {"max_tokens": 12, "temperature": 0}}
    status, sent, body = post(server, f"/v2/models/{MODEL}/generate_stream", document, "stream-1", header)
    streamed = [json.loads(line.removeprefix(b"data: ")) for line in body.split(b"\n\n") if line]
    assert status == 200 and len(streamed) > 3  # an event per token went to the client...
    events = events_of(sink, "stream-1")
    assert [h["ce-id"] for h, _ in sink.events].count("stream-1") == 2  # ...and one request and one response to the sink
    assert events[REQUEST_EVENT][0].get_data() == json.loads(sent)
    response, headers = events[RESPONSE_EVENT]
    assert headers["content-type"] == STREAM_CONTENT_TYPE
    assert response.get_data() == {
        "text": "".join(event["text_output"] for event in streamed), "finish_reason": "length",
        "prompt_tokens": 2, "completion_tokens": 12,
    }
    span, children = server_span(otel_collector, trace_id, parent)
    assert span["name"] == GENERATE_STREAM_SPAN and QUEUE_WAIT_SPAN in children
    assert attributes(span)["gen_ai.usage.output_tokens"] == 12


def test_a_client_that_leaves_mid_stream_is_logged_as_disconnected(server, sink, otel_collector):  # noqa: F811
    header, trace_id, parent = traceparent()
    host, port = server.http_url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    document = {"model": MODEL, "messages": [{"role": "user", "content": "w6"}], "max_tokens": 2000, "stream": True}
    connection.request("POST", "/v1/chat/completions", json.dumps(document),
                       {"Content-Type": "application/json", "X-Request-Id": "left-1", "traceparent": header})
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    connection.close()
    logged = events_of(sink, "left-1")[RESPONSE_EVENT][0].get_data()
    assert logged["finish_reason"] == DISCONNECTED
    assert 1 <= logged["completion_tokens"] < 2000
    span, _children = server_span(otel_collector, trace_id, parent)
    assert span["name"] == CHAT_SPAN
    assert attributes(span)["gen_ai.response.finish_reasons"] == [DISCONNECTED]


def test_a_refused_request_is_logged_without_a_response_and_traced_as_failed(server, sink, otel_collector):  # noqa: F811
    header, trace_id, parent = traceparent()
    document = {"model": MODEL, "prompt": "w1", "max_tokens": "many"}
    status, sent, _answer = post(server, "/v1/completions", document, "refused-1", header)
    assert status == 400
    events = events_of(sink, "refused-1", types=1)
    assert set(events) == {REQUEST_EVENT} and events[REQUEST_EVENT][0].get_data() == json.loads(sent)  # both are queued at once
    span, _children = server_span(otel_collector, trace_id, parent)
    assert span["status"].get("code") == 2  # STATUS_CODE_ERROR
    status, _answer = post_json(server.http_url, "/v1/completions", {"model": MODEL, "prompt": "w1", "max_tokens": 1})
    assert status == 200
