"""Payload logging on a real `slimserve serve` process: REST, gRPC and gRPC-Web requests and responses reach a
real HTTP sink as CloudEvents in KServe's logger format, sampled by request id; a dead sink or a full queue
counts its events as failed or dropped and never fails a request."""

from __future__ import annotations

import hashlib
import json
import time

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from payload_sink import Sink, events_of
from serving_helpers import HOST, ServerProcess, free_port, metric_samples, request
from tests.web.grpc_web_helpers import BINARY, call, frame

from slimserve.serving.grpc_service import SERVICE_NAME as GRPC_SERVICE
from slimserve.serving.metrics import ServerMetrics
from slimserve.serving.observability import PayloadLogSettings
from slimserve.serving.payload_log import REQUEST_EVENT, RESPONSE_EVENT, PayloadLogger, sampled

MODEL = "digits-mlp"
PIXELS = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 64)
SAMPLE_RATE = 0.5
SOURCE = "/apis/slimserve.io/v1alpha1/namespaces/team-a/modelservices/digits"


@pytest.fixture(scope="module")
def sink():
    with Sink() as sink:
        yield sink


@pytest.fixture(scope="module")
def server(server_logs, sink):
    server = ServerProcess(
        f"builtin://{MODEL}", server_logs, "--grpc-web", "--payload-log-url", sink.url,
        "--payload-log-sample-rate", str(SAMPLE_RATE),
        env={"SLIMSERVE_SERVICE_NAME": "digits", "SLIMSERVE_SERVICE_NAMESPACE": "team-a"},
    ).start()
    try:
        yield server
    finally:
        server.stop()


def logged_ids(count: int, prefix: str, rate: float = SAMPLE_RATE) -> list[str]:
    """`count` request ids that the sampler logs at `rate`."""
    ids, n = [], 0
    while len(ids) < count:
        if sampled(f"{prefix}-{n}", rate):
            ids.append(f"{prefix}-{n}")
        n += 1
    return ids


def rest_body() -> bytes:
    return json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": PIXELS.ravel().tolist()}]}
    ).encode()


def grpc_request() -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name=MODEL)
    message.inputs.add(name="input", datatype="FP32", shape=list(PIXELS.shape))
    message.raw_input_contents.append(PIXELS.tobytes())
    return message


def assert_kserve_attributes(event, headers: dict[str, str], event_type: str, content_type: str) -> None:
    assert event.get_type() == event_type and event.get_specversion() == "1.0"
    assert event.get_source() == SOURCE
    assert headers["content-type"] == content_type
    extensions = event.get_extension
    assert (extensions("inferenceservicename"), extensions("namespace")) == ("digits", "team-a")
    assert (extensions("component"), extensions("endpoint")) == ("predictor", "default")
    assert headers["ce-time"]


def test_rest_request_and_response_arrive_as_kserve_cloudevents(server, sink):
    (rid,) = logged_ids(1, "rest")
    body = rest_body()
    status, headers, answer = request(server.http_url, "POST", f"/v2/models/{MODEL}/infer", body,
                                      {"Content-Type": "application/json", "X-Request-Id": rid})
    assert status == 200 and headers["x-request-id"] == rid
    events = events_of(sink, rid)
    (sent, sent_headers), (returned, returned_headers) = events[REQUEST_EVENT], events[RESPONSE_EVENT]
    assert_kserve_attributes(sent, sent_headers, REQUEST_EVENT, "application/json")
    assert_kserve_attributes(returned, returned_headers, RESPONSE_EVENT, "application/json")
    assert sent.get_data() == json.loads(body)
    assert returned.get_data() == json.loads(answer)


def out_of_order_bytes(message: service_pb2.ModelInferRequest) -> bytes:
    """The message's bytes with its tensors' contents first: valid protobuf (fields may come in any order, and
    repeated ones merge) that serializing the parsed message would not give back."""
    head = service_pb2.ModelInferRequest()
    head.CopyFrom(message)
    del head.raw_input_contents[:]
    sent = service_pb2.ModelInferRequest(raw_input_contents=message.raw_input_contents).SerializeToString()
    sent += head.SerializeToString()
    assert service_pb2.ModelInferRequest.FromString(sent) == message and sent != message.SerializeToString()
    return sent


def test_grpc_and_grpc_web_payloads_arrive_as_the_bytes_received_and_sent(server, sink):
    grpc_id, web_id = logged_ids(2, "proto")
    sent = out_of_order_bytes(grpc_request())
    with grpc.insecure_channel(server.grpc_url) as channel:
        infer = channel.unary_unary(f"/{GRPC_SERVICE}/ModelInfer")  # bytes in, bytes out
        answer = infer(sent, metadata=(("x-request-id", grpc_id),), timeout=10)
    web = call(server.http_url, "ModelInfer", frame(sent), BINARY, headers={"X-Request-Id": web_id})
    assert web.http_status == 200 and web.trailers["grpc-status"] == "0"
    for rid, returned_bytes in ((grpc_id, answer), (web_id, web.messages[0])):
        events = events_of(sink, rid)
        (request_event, request_headers), (response_event, response_headers) = (events[REQUEST_EVENT],
                                                                                events[RESPONSE_EVENT])
        assert_kserve_attributes(request_event, request_headers, REQUEST_EVENT, "application/x-protobuf")
        assert_kserve_attributes(response_event, response_headers, RESPONSE_EVENT, "application/x-protobuf")
        assert request_event.get_data() == sent
        assert response_event.get_data() == returned_bytes
        assert service_pb2.ModelInferResponse.FromString(returned_bytes).outputs[0].name


def test_requests_refused_by_auth_are_not_logged_on_any_protocol(server_logs, sink, tmp_path):
    """As KServe's logger, which sits behind the authentication: a refused request never reaches the log."""
    (tmp_path / "ci-robot").write_text("sha256:" + hashlib.sha256(b"the-key").hexdigest())
    guarded = ServerProcess(f"builtin://{MODEL}", server_logs, "--grpc-web", "--payload-log-url", sink.url,
                            "--auth-mode", "apiKeys", "--auth-api-keys-dir", str(tmp_path)).start()
    wrong, right = {"Authorization": "Bearer not-the-key"}, {"Authorization": "Bearer the-key"}
    try:
        status, _headers, _body = request(guarded.http_url, "POST", f"/v2/models/{MODEL}/infer", rest_body(),
                                          {"Content-Type": "application/json", "X-Request-Id": "refused-rest", **wrong})
        assert status == 401
        web = call(guarded.http_url, "ModelInfer", frame(grpc_request().SerializeToString()), BINARY,
                   headers={"X-Request-Id": "refused-web", **wrong})
        assert web.status == grpc.StatusCode.UNAUTHENTICATED.value[0], web
        with grpc.insecure_channel(guarded.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(grpc_request(), timeout=10,
                                metadata=(("x-request-id", "refused-grpc"), ("authorization", wrong["Authorization"])))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            stub.ModelInfer(grpc_request(), timeout=10,
                            metadata=(("x-request-id", "allowed-grpc"), ("authorization", right["Authorization"])))
        events_of(sink, "allowed-grpc")  # one sender, in order: what was refused before it would be there now
        assert not any(sink.by_id(rid) for rid in ("refused-rest", "refused-web", "refused-grpc"))
    finally:
        guarded.stop()


def test_sampling_logs_exactly_the_requests_whose_id_it_picks(server, sink):
    ids = [f"sampled-{n}" for n in range(120)]
    for rid in ids:
        status, _headers, _body = request(server.http_url, "POST", f"/v2/models/{MODEL}/infer", rest_body(),
                                          {"Content-Type": "application/json", "X-Request-Id": rid})
        assert status == 200
    picked = {rid for rid in ids if sampled(rid, SAMPLE_RATE)}
    assert 30 < len(picked) < 90  # the hash spreads ids: about half of them
    events_of(sink, max(picked, key=lambda rid: int(rid.split("-")[1])))  # the last one logged has arrived
    received = {event[0].get_id() for event in
                (sink.by_id(rid).get(REQUEST_EVENT) for rid in ids) if event is not None}
    assert received == picked


def test_a_dead_sink_fails_events_but_no_request(server_logs):
    dead = f"http://{HOST}:{free_port()}/events"  # nothing listens there
    server = ServerProcess(f"builtin://{MODEL}", server_logs, "--payload-log-url", dead,
                           "--payload-log-timeout-s", "1").start()
    try:
        for n in range(5):
            status, _headers, _body = request(server.http_url, "POST", f"/v2/models/{MODEL}/infer", rest_body(),
                                              {"Content-Type": "application/json"})
            assert status == 200
        failed = 'slimserve_payload_log_events_total{outcome="failed"}'
        deadline = time.monotonic() + 20
        while metric_samples(server.http_url).get(failed, 0) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        samples = metric_samples(server.http_url)
        assert samples[failed] == 10  # a request and a response event each
        assert samples.get('slimserve_payload_log_events_total{outcome="sent"}', 0) == 0
    finally:
        server.stop()


def test_a_full_queue_drops_and_counts_and_never_waits(sink):
    """The logger itself (a queue of 3) in front of a sink that stalls: record() returns at once, the
    overflow is counted as dropped, and what was queued is sent once the sink answers again."""
    sink.stalling = True
    sink.hold.clear()
    metrics = ServerMetrics()
    logger = PayloadLogger(PayloadLogSettings(sink.url, mode="request"), metrics, max_queued=3)
    before = len(sink.events)
    try:
        started = time.monotonic()
        logger.record("held-0", MODEL, b"{}", "application/json", None, "application/json")
        while logger.queued:  # the sender took the first event and waits for the sink with it
            time.sleep(0.01)
        for n in range(1, 11):
            logger.record(f"held-{n}", MODEL, b"{}", "application/json", None, "application/json")
        assert time.monotonic() - started < 2  # never waited for the stalled sink
        assert events(metrics, "dropped") == 7  # 1 in flight, 3 queued, 7 over
    finally:
        sink.stalling = False
        sink.hold.set()
        logger.close()
    assert len(sink.events) - before == 4
    assert events(metrics, "sent") == 4


def events(metrics: ServerMetrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("slimserve_payload_log_events_total", {"outcome": outcome}) or 0
