"""The command lines the benchmarks build for ghz, h2load and perf_analyzer, run for about a second each against
a real server: their outputs parse into counts the server's own counters agree with, refused requests are
counted as errors (or refused), not as throughput, and every client's rate is counted over the same steady
window of its answers (loadgen.window)."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
from loadgen import bodies, ghz, h2load, measured, perf_analyzer, window

from tests.serving.serving_helpers import ServerProcess, metric_samples

MODEL = "digits-mlp"
ROW = ("input", "FP32", np.random.default_rng(0).random((1, 64), dtype=np.float32), "logits")
REST_OK = 'slimserve_requests_total{code="200",endpoint="infer",protocol="rest"}'
GRPC_OK = 'slimserve_requests_total{code="OK",endpoint="ModelInfer",protocol="grpc"}'


def served(server, key: str) -> float:
    return metric_samples(server.http_url).get(key, 0.0)


def assert_measured(result: dict, client: str, concurrency: int) -> None:
    assert result["errors"] == 0, result
    assert result["requests"] > 0 and result["rps"] > 0, result
    assert 0 < result["p50_ms"] <= result["p99_ms"], result
    assert result["client"] == client and 0 <= result["client_cpu_share"] <= 1, result
    # A second of the digits MLP is hundreds of answers: counted between the first and the last round.
    assert result["window"] == "steady", result
    assert result["window_requests"] % concurrency == 0, result  # whole rounds, one answer per client each
    assert result["requests"] - 3 * concurrency < result["window_requests"] <= result["requests"] - 2 * concurrency
    assert 0 < result["window_s"] < result["seconds"], result


def test_h2load_rest_binary_extension(bench_server):
    body, headers = bodies.rest_binary(*ROW)
    before = served(bench_server, REST_OK)
    result = h2load.run(f"http://{bench_server.http_url}/v2/models/{MODEL}/infer", body, headers,
                        concurrency=2, duration_s=1.0, warmup_s=0.2)
    assert_measured(result, "h2load", concurrency=2)
    # The measured run's log holds its own requests, none of the probe's before it (h2load appends to a log).
    assert result["requests"] == result["requested"], result
    # The probe's requests are answered but not measured: the server counted more than h2load reports.
    assert served(bench_server, REST_OK) - before > result["requests"]


def test_a_runs_model_calls_are_read_from_the_servers_metrics(bench_server):
    import serving

    server = serving.Server("slimserve", bench_server.process, bench_server.http_port, bench_server.grpc_port, MODEL,
                            bench_server.log_path)
    body, headers = bodies.rest_binary(*ROW)
    before = serving.model_calls(server)
    result = h2load.run(f"http://{bench_server.http_url}/v2/models/{MODEL}/infer", body, headers,
                        concurrency=4, duration_s=0.5, warmup_s=0.2)
    after = serving.model_calls(server)
    calls, rows = (after[name] - before[name] for name in ("slimserve_batch_size_count", "slimserve_batch_size_sum"))
    assert rows > result["requests"] and 1 <= calls <= rows  # one row a request, the probe's included
    pace = serving.model_pace(before, after)
    assert pace["rows_per_call"] == pytest.approx(rows / calls, abs=0.01) and pace["model_rows_per_s"] > 0
    assert serving.model_pace(after, after) == {}  # no call in between: no pace to tell


def test_a_run_against_the_server_carries_its_cpu_and_the_machines_steal(bench_server):
    """serving.py and grpc_web.py measure every load generator's run the same way (measured.against_server)."""
    body, headers = bodies.rest_binary(*ROW)
    row = measured.against_server(bench_server.process.pid, lambda: h2load.run(
        f"http://{bench_server.http_url}/v2/models/{MODEL}/infer", body, headers, concurrency=2, duration_s=0.5,
        warmup_s=0.1))
    assert row["errors"] == 0 and row["server_cpu_s"] > 0, row  # the server answered: it spent CPU on it
    assert row["client_bound"] == (row["client_cpu_share"] >= measured.CLIENT_BOUND_SHARE
                                   or row["client_cpu_s"] >= row["server_cpu_s"]), row
    assert 0 <= row["steal_share"] < 1, row  # /proc/stat is there on Linux


def test_h2load_grpc_web_frames(bench_server):
    message = bodies.grpc_request(MODEL, *ROW)
    framed = struct.pack(">BI", 0, message.ByteSize()) + message.SerializeToString()
    result = h2load.run(f"http://{bench_server.http_url}/inference.GRPCInferenceService/ModelInfer", framed,
                        {"content-type": "application/grpc-web+proto"}, concurrency=2, duration_s=1.0, warmup_s=0.2)
    assert_measured(result, "h2load", concurrency=2)


def test_h2load_counts_refused_requests_as_errors(bench_server):
    body, headers = bodies.rest_binary(*ROW)
    result = h2load.run(f"http://{bench_server.http_url}/v2/models/no-such-model/infer", body, headers,
                        concurrency=1, duration_s=1.0, warmup_s=0.0)
    assert result["requests"] == 0 and result["errors"] > 0 and "rps" not in result, result


def test_ghz_model_infer(bench_server):
    request = bodies.grpc_request(MODEL, *ROW).SerializeToString()
    before = served(bench_server, GRPC_OK)
    result = ghz.run(bench_server.grpc_url, request, concurrency=2, duration_s=1.0, warmup_s=0.0)
    assert_measured(result, "ghz", concurrency=2)
    assert served(bench_server, GRPC_OK) - before >= result["requests"]


def test_ghz_counts_refused_calls_as_errors(bench_server):
    request = bodies.grpc_request("no-such-model", *ROW).SerializeToString()
    result = ghz.run(bench_server.grpc_url, request, concurrency=1, duration_s=1.0, warmup_s=0.0)
    assert result["requests"] == 0 and result["errors"] > 0 and "rps" not in result, result


# --- the steady window ------------------------------------------------------------------------------
def batched_run(clients: int, batches: int, batch_s: float, fill_s: float, last_batch: int) -> window.Answered:
    """A closed-loop run against a server answering `clients` requests at a time every `batch_s`: the first
    batch late by `fill_s` (connections opening, a cold model), the last one partial (the run draining)."""
    ends, latencies = [], []
    for batch in range(batches):
        answered = fill_s + (batch + 1) * batch_s
        for _ in range(clients if batch < batches - 1 else last_batch):
            ends.append(answered)
            latencies.append(batch_s + (fill_s if batch == 0 else 0.0))
    return window.Answered.of(ends, latencies)


def test_steady_window_counts_whole_batches_between_the_runs_edges():
    run = batched_run(clients=32, batches=12, batch_s=0.1, fill_s=0.25, last_batch=32)
    counted = window.steady(run, concurrency=32)
    assert counted["window"] == "steady" and counted["window_requests"] == 10 * 32
    assert counted["rps"] == pytest.approx(320.0)  # the server's pace: 32 answers each 0.1 s
    assert counted["p50_ms"] == counted["p99_ms"] == pytest.approx(100.0)  # the late first batch is left out
    # Counted whole, the same answers over the run's time understate that pace by the slow first batch.
    whole = len(run.ends_s) / (run.ends_s[-1] - (run.ends_s - run.latencies_s).min())
    assert whole == pytest.approx(384 / 1.45) and whole < 0.9 * counted["rps"]


def test_steady_window_leaves_a_partial_last_batch_out():
    counted = window.steady(batched_run(clients=32, batches=12, batch_s=0.1, fill_s=0.0, last_batch=5), 32)
    # 357 answers: the first round and the last 32 out, and 5 more, which would end the window inside a batch.
    assert counted["rps"] == pytest.approx(320.0) and counted["window_requests"] == 9 * 32


def test_short_run_is_counted_whole():
    run = batched_run(clients=8, batches=2, batch_s=0.5, fill_s=0.0, last_batch=8)
    counted = window.steady(run, concurrency=8)
    assert counted["window"] == "whole run" and counted["window_requests"] == 16
    assert counted["rps"] == pytest.approx(16 / 1.0)
    assert window.steady(window.Answered.of([], []), concurrency=8) == {}


def test_a_slow_models_cells_run_until_each_client_has_had_enough_answers():
    import serving

    # A batch of 32 at 210 rows a second: 1 s would hold about six rounds, most of them the window's edges.
    assert serving.cell_seconds(1.0, 32, 210.0, answers_per_client=15) == pytest.approx(15 * 32 / 210.0)
    # A fast model's given duration already holds hundreds of rounds.
    assert serving.cell_seconds(1.0, 32, 50_000.0, answers_per_client=15) == 1.0


def test_the_bare_forward_is_a_throughput_its_slow_calls_included():
    import serving

    class Stalling:
        """A model whose every fourth call stalls, as a call the machine delays does."""

        calls = 0

        def predict(self, inputs):
            assert inputs["input"].shape == (8, 64)
            self.calls += 1
            time.sleep(0.040 if self.calls % 4 == 0 else 0.005)

    forward = serving.BareForward(Stalling(), "input", ROW[2])
    rate = forward.measure(8, seconds=0.5)
    # A mean call of 13.75 ms: about 580 rows a second. The median call (5 ms) would say 1600; the stalls
    # count, as they do in a server's req/s. (A loaded machine only stretches the sleeps.)
    assert 8 / 0.01375 / 2 < rate <= 8 / 0.01375 * 1.02
    assert forward.median_rates() == {8: rate}


def test_minilms_target_line_says_how_the_model_ran_in_the_server():
    import serving

    cell = {"server": "slimserve", "model": "minilm-l6", "protocol": "rest", "concurrency": 32, "rps": 190.0,
            "model_rows_per_s": 200.0, "rows_per_call": 31.5}
    assert serving.targets([cell], {"minilm-l6": {32: 210.0}}) == [
        "MiniLM, rest, c32: SlimServe / bare forward at batch 32 = 0.90 (target >= 0.95); in the server the model "
        "ran 31.5 rows a call at 0.95 of the bare forward's pace, busy 0.95 of the time (the rest: the loop's turnaround)"]


def test_answers_must_pair_times_with_latencies():
    with pytest.raises(ValueError, match="one row each"):
        window.Answered.of([0.1, 0.2], [0.1])


def test_ghz_times_parse_to_the_nanosecond():
    assert ghz._unix_ns("1970-01-01T00:00:01.000000007Z") == 1_000_000_007
    assert ghz._unix_ns("1970-01-01T01:00:02.5+01:00") == 2_500_000_000
    assert ghz._unix_ns("2026-12-02T13:20:01Z") - ghz._unix_ns("2026-12-02T13:20:00.999999999Z") == 1
    with pytest.raises(ValueError, match="RFC 3339"):
        ghz._unix_ns("yesterday")


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
