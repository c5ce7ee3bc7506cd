"""The command lines the benchmarks build for ghz, h2load and perf_analyzer, run for about a second each against
a real server: their outputs parse into counts the server's own counters agree with, and refused requests are
counted as errors (or refused), not as throughput."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from loadgen import bodies, ghz, h2load, perf_analyzer

from tests.serving.serving_helpers import ServerProcess, metric_samples

MODEL = "digits-mlp"
ROW = ("input", "FP32", np.random.default_rng(0).random((1, 64), dtype=np.float32), "logits")
REST_OK = 'slimserve_requests_total{code="200",endpoint="infer",protocol="rest"}'
GRPC_OK = 'slimserve_requests_total{code="OK",endpoint="ModelInfer",protocol="grpc"}'


def served(server, key: str) -> float:
    return metric_samples(server.http_url).get(key, 0.0)


def assert_measured(result: dict, client: str) -> None:
    assert result["errors"] == 0, result
    assert result["requests"] > 0 and result["rps"] > 0, result
    assert 0 < result["p50_ms"] <= result["p99_ms"], result
    assert result["client"] == client and 0 <= result["client_cpu_share"] <= 1, result


def test_h2load_rest_binary_extension(bench_server):
    body, headers = bodies.rest_binary(*ROW)
    before = served(bench_server, REST_OK)
    result = h2load.run(f"http://{bench_server.http_url}/v2/models/{MODEL}/infer", body, headers,
                        concurrency=2, duration_s=1.0, warmup_s=0.2)
    assert_measured(result, "h2load")
    # Warm-up requests are answered but not measured: the server counted at least what h2load reports.
    assert served(bench_server, REST_OK) - before >= result["requests"]


def test_h2load_grpc_web_frames(bench_server):
    message = bodies.grpc_request(MODEL, *ROW)
    framed = struct.pack(">BI", 0, message.ByteSize()) + message.SerializeToString()
    result = h2load.run(f"http://{bench_server.http_url}/inference.GRPCInferenceService/ModelInfer", framed,
                        {"content-type": "application/grpc-web+proto"}, concurrency=2, duration_s=1.0, warmup_s=0.2)
    assert_measured(result, "h2load")


def test_h2load_counts_refused_requests_as_errors(bench_server):
    body, headers = bodies.rest_binary(*ROW)
    result = h2load.run(f"http://{bench_server.http_url}/v2/models/no-such-model/infer", body, headers,
                        concurrency=1, duration_s=1.0, warmup_s=0.0)
    assert result["requests"] == 0 and result["errors"] > 0 and "rps" not in result, result


def test_ghz_model_infer(bench_server):
    request = bodies.grpc_request(MODEL, *ROW).SerializeToString()
    before = served(bench_server, GRPC_OK)
    result = ghz.run(bench_server.grpc_url, request, concurrency=2, duration_s=1.0, warmup_s=0.0)
    assert_measured(result, "ghz")
    assert served(bench_server, GRPC_OK) - before >= result["requests"]


def test_ghz_counts_refused_calls_as_errors(bench_server):
    request = bodies.grpc_request("no-such-model", *ROW).SerializeToString()
    result = ghz.run(bench_server.grpc_url, request, concurrency=1, duration_s=1.0, warmup_s=0.0)
    assert result["requests"] == 0 and result["errors"] > 0 and "rps" not in result, result


def test_grpc_request_is_the_python_clients_bytes():
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc._utils import _get_inference_request

    for name, datatype, array, output in (ROW, ("text", "BYTES", np.array([b"a sentence"], dtype=object), "embedding")):
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        theirs = _get_inference_request(MODEL, [tensor], "", "", [grpcclient.InferRequestedOutput(output)],
                                        0, False, False, 0, None, None)
        assert bodies.grpc_request(MODEL, name, datatype, array, output).SerializeToString() == theirs.SerializeToString()


# --- perf_analyzer: OpenAI streaming ---------------------------------------------------------------
DECODER = "tiny-lm"
GENERATED = "slimserve_generated_tokens_total"


@pytest.fixture(scope="module")
def decoder_server(tmp_path_factory, load_generators):
    if perf_analyzer.binary() is None:
        pytest.skip("perf_analyzer is installed on x86-64 only")
    server = ServerProcess("builtin://tiny-lm", tmp_path_factory.mktemp("bench-decoder"), "--model-name", DECODER).start()
    try:
        yield server
    finally:
        server.stop()


def completion(model: str, index: int) -> dict:
    return {"model": model, "prompt": f"def handler_{index}(request", "max_tokens": 6 + 3 * index, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}


def test_perf_analyzer_streamed_completions(decoder_server):
    requests = [completion(DECODER, i) for i in range(6)]
    before = served(decoder_server, GENERATED)
    answers, seconds, finished = perf_analyzer.run(decoder_server.http_url, "/v1/completions", DECODER, requests,
                                                   concurrency=3)
    # Every request sent once; the tokens its profile counts are the tokens the server says it generated.
    assert len(answers) == len(requests)
    assert sum(tokens for tokens, _ in answers) == served(decoder_server, GENERATED) - before
    assert all(1 <= tokens <= max(r["max_tokens"] for r in requests) for tokens, _ in answers), answers
    assert all(0 < ttft <= seconds for _, ttft in answers), (answers, seconds)
    assert finished.returncode == 0 and finished.cpu_s > 0


def test_perf_analyzer_refused_request_is_an_error(decoder_server):
    with pytest.raises(RuntimeError, match="(?s)perf_analyzer failed.*HTTP code 404"):
        perf_analyzer.run(decoder_server.http_url, "/v1/completions", "no-such-model",
                          [completion("no-such-model", 0)], concurrency=1)
