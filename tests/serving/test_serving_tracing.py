"""Traces of a real `slimserve serve` process received by a real OpenTelemetry Collector: REST and gRPC requests
that carry a W3C traceparent become server spans under the caller's span, with decode, queue_wait and encode
children, and every batch's forward span links to the spans of all the requests that rode in it."""

from __future__ import annotations

import json
import secrets
import threading

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving_helpers import ServerProcess, request
from tests.otelcol.collector import otel_collector  # noqa: F401 - the session's collector

from slimserve.serving.tracing import (
    DECODE_SPAN, ENCODE_SPAN, FORWARD_SPAN, GRPC_SPAN, QUEUE_WAIT_SPAN, REST_SPAN,
)

MODEL = "digits"
CONCURRENT = 12  # per protocol, sent at once so that batches form


@pytest.fixture(scope="module")
def traced_server(server_logs, otel_collector):  # noqa: F811
    # The CNN is slow enough to run on the model thread, so concurrent requests are batched.
    server = ServerProcess(
        "builtin://digits-cnn", server_logs, "--model-name", MODEL, "--tracing-endpoint", otel_collector.endpoint,
        "--max-latency-ms", "20", "--service-name", "digits-traced",
        env={"OTEL_BSP_SCHEDULE_DELAY": "100"},  # the SDK's export interval, in ms: the test waits less
    ).start()
    try:
        yield server
    finally:
        server.stop()


def traceparent() -> tuple[str, str, str]:
    """A sampled W3C traceparent of a fresh trace; returns (header, trace id, parent span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def image() -> np.ndarray:
    return np.random.default_rng(0).random((1, 64), dtype=np.float32)


def rest_call(server: ServerProcess, header: str) -> int:
    pixels = image()
    document = {"inputs": [{"name": "input", "shape": list(pixels.shape), "datatype": "FP32",
                            "data": pixels.ravel().tolist()}]}
    status, _headers, body = request(server.http_url, "POST", f"/v2/models/{MODEL}/infer",
                                     json.dumps(document).encode(),
                                     {"Content-Type": "application/json", "traceparent": header})
    assert status == 200, body
    return json.loads(body)["parameters"]["batch_size"]


def grpc_call(stub, header: str) -> int:
    pixels = image()
    message = service_pb2.ModelInferRequest(model_name=MODEL)
    message.inputs.add(name="input", datatype="FP32", shape=list(pixels.shape))
    message.raw_input_contents.append(pixels.tobytes())
    response = stub.ModelInfer(message, metadata=(("traceparent", header),), timeout=30)
    return response.parameters["batch_size"].int64_param


def test_spans_arrive_under_the_callers_traceparent_and_batches_link_their_requests(traced_server, otel_collector):  # noqa: F811
    calls = [("rest", traceparent()) for _ in range(CONCURRENT)] + [("grpc", traceparent()) for _ in range(CONCURRENT)]
    batch_sizes: dict[str, int] = {}
    with grpc.insecure_channel(traced_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        start = threading.Barrier(len(calls))

        def send(protocol: str, header: str, trace_id: str) -> None:
            start.wait()
            batch_sizes[trace_id] = rest_call(traced_server, header) if protocol == "rest" else grpc_call(stub, header)

        threads = [threading.Thread(target=send, args=(protocol, header, trace_id))
                   for protocol, (header, trace_id, _parent) in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert len(batch_sizes) == len(calls)
    trace_ids = {trace_id for _protocol, (_header, trace_id, _parent) in calls}

    def complete(spans: list[dict]) -> bool:
        ours = [span for span in spans if span["traceId"] in trace_ids]
        return sum(span["name"] == ENCODE_SPAN for span in ours) == len(calls) and any(
            span["name"] == FORWARD_SPAN for span in ours)

    spans = otel_collector.wait_for_spans(complete)
    by_id = {span["spanId"]: span for span in spans}
    forwards = [span for span in spans if span["name"] == FORWARD_SPAN and span["traceId"] in trace_ids]
    linked_from: dict[str, list[dict]] = {}
    for forward in forwards:
        for link in forward.get("links", []):
            linked_from.setdefault(link["spanId"], []).append(forward)

    for protocol, (_header, trace_id, parent) in calls:
        (server_span,) = [span for span in spans if span["traceId"] == trace_id and span.get("parentSpanId") == parent]
        assert server_span["name"] == (REST_SPAN if protocol == "rest" else GRPC_SPAN)
        assert server_span["kind"] == 2  # SPAN_KIND_SERVER
        assert server_span["resource"]["service.name"] == {"stringValue": "digits-traced"}
        children = sorted(span["name"] for span in spans if span.get("parentSpanId") == server_span["spanId"])
        assert {DECODE_SPAN, QUEUE_WAIT_SPAN, ENCODE_SPAN} <= set(children), children
        # One model call ran the request: its forward span links here and counts the rows of the response.
        (forward,) = linked_from[server_span["spanId"]]
        rows = {a["key"]: a["value"] for a in forward["attributes"]}["slimserve.batch.rows"]
        assert int(rows["intValue"]) == batch_sizes[trace_id]
        assert len(forward["links"]) == batch_sizes[trace_id]  # one row per request here
        for link in forward["links"]:
            assert link["traceId"] == by_id[link["spanId"]]["traceId"]
        # The forward span sits in the trace of the first request of its batch.
        assert by_id[forward["parentSpanId"]]["spanId"] in {link["spanId"] for link in forward["links"]}
    assert any(len(forward["links"]) > 1 for forward in forwards), "no batch of several requests formed"


def test_requests_without_traceparent_start_their_own_traces(traced_server, otel_collector):  # noqa: F811
    status, headers, _body = request(traced_server.http_url, "GET", f"/v2/models/{MODEL}")
    assert status == 200
    pixels = image()
    document = {"inputs": [{"name": "input", "shape": list(pixels.shape), "datatype": "FP32",
                            "data": pixels.ravel().tolist()}]}
    status, headers, _body = request(traced_server.http_url, "POST", f"/v2/models/{MODEL}/infer",
                                     json.dumps(document).encode(),
                                     {"Content-Type": "application/json", "X-Request-Id": "untraced-caller"})
    assert status == 200

    def arrived(spans: list[dict]) -> bool:
        return any(_attribute(span, "slimserve.request_id") == "untraced-caller" for span in spans)

    spans = otel_collector.wait_for_spans(arrived)
    (root,) = [span for span in spans if _attribute(span, "slimserve.request_id") == "untraced-caller"]
    assert root["name"] == REST_SPAN and not root.get("parentSpanId")
    assert _attribute(root, "slimserve.model") == MODEL


def _attribute(span: dict, key: str) -> str | None:
    for attribute in span.get("attributes", []):
        if attribute["key"] == key:
            return attribute["value"].get("stringValue")
    return None


def test_tracing_off_loads_nothing_of_opentelemetry():
    """The server with tracing and payload logging off never imports their SDKs (no cost on the hot path)."""
    import subprocess
    import sys

    code = ("import sys, slimserve.cli.serve, slimserve.serving.server; "
            "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(('opentelemetry', 'cloudevents'))}))")
    printed = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert printed.stdout.strip() == "[]"


def test_sampling_follows_the_callers_flag_and_the_rate_for_the_rest(otel_collector):  # noqa: F811
    """In process, against the collector: a root is sampled at the rate before the SDK makes anything; a caller's
    traceparent decides for its request whatever the rate."""
    from slimserve.serving.observability import TracingSettings
    from slimserve.serving.tracing import NO_TRACE
    from slimserve.serving.tracing_otel import OtelTracing

    never, always = (OtelTracing(TracingSettings(otel_collector.endpoint, rate)) for rate in (0.0, 1.0))
    try:
        header, trace_id, parent_id = traceparent()
        unsampled = header[:-2] + "00"
        assert all(never.start(REST_SPAN, None, None, f"root-{n}", MODEL) is NO_TRACE for n in range(50))
        assert always.start(REST_SPAN, unsampled, None, "unsampled-caller", MODEL) is NO_TRACE
        assert always.start(REST_SPAN, "00-not-a-traceparent", None, "bad-header", MODEL).enabled  # a root then
        with never.start(REST_SPAN, header, None, "sampled-caller", MODEL) as traced:
            assert traced.enabled
    finally:
        never.close()
        always.close()
    spans = otel_collector.wait_for_spans(
        lambda spans: any(_attribute(span, "slimserve.request_id") == "sampled-caller" for span in spans))
    (span,) = [span for span in spans if _attribute(span, "slimserve.request_id") == "sampled-caller"]
    assert (span["traceId"], span["parentSpanId"]) == (trace_id, parent_id)
