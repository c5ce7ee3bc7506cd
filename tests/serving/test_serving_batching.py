"""Dynamic batching end to end: concurrent requests are merged, and each gets exactly its own rows back."""

from __future__ import annotations

import json

import numpy as np

from serving_helpers import metric_samples, post_json, send_together

INFER = "/v2/models/minilm-l6/infer"
WORDS = "batching keeps every request's rows together and in order".split()


def body(texts: list[str]) -> bytes:
    return json.dumps({"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}).encode()


def embedding(document: dict) -> np.ndarray:
    output = document["outputs"][0]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def test_concurrent_requests_are_merged_and_each_gets_its_own_result(minilm_server):
    # MiniLM: slow enough per call that batching pays (trivially fast models are not batched).
    requests = [[" ".join(WORDS[i % 5:]) + f" #{i}.{j}" for j in range(rows)]
                for i, rows in enumerate([1, 2, 3, 1, 2, 1, 3, 1, 2, 1, 1, 2])]
    before = metric_samples(minilm_server.http_url)

    answers = send_together(minilm_server.http_url, [(INFER, body(texts)) for texts in requests])

    after = metric_samples(minilm_server.http_url)
    calls = after["slimserve_batch_size_count"] - before["slimserve_batch_size_count"]
    rows = after["slimserve_batch_size_sum"] - before["slimserve_batch_size_sum"]
    assert rows == sum(len(texts) for texts in requests)  # every row ran exactly once
    assert calls < len(requests)  # ...in fewer model calls than requests
    # No model call was above the limit (32): the histogram has nothing above that bucket.
    assert after["slimserve_batch_size_count"] == after['slimserve_batch_size_bucket{le="32.0"}']

    merged = 0
    for texts, (status, answer) in zip(requests, answers):
        assert status == 200, answer
        document = json.loads(answer)
        merged += document["parameters"]["batch_size"] > len(texts)
        alone_status, alone = post_json(minilm_server.http_url, INFER, json.loads(body(texts)))
        assert alone_status == 200 and alone["parameters"]["batch_size"] == len(texts)
        np.testing.assert_allclose(embedding(document), embedding(alone), rtol=1e-3, atol=1e-4)
    assert merged > 0


def test_metrics_expose_the_autoscaling_and_queue_signals(mlp_server):
    post_json(mlp_server.http_url, "/v2/models/digits-mlp/infer",
              {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]})
    samples = metric_samples(mlp_server.http_url)
    assert samples["slimserve_inflight_requests"] == 0  # nothing in flight between tests
    assert samples["slimserve_queue_depth"] == 0
    assert samples["slimserve_model_ready"] == 1
    assert samples['slimserve_model_info{model_version="canary"}'] == 1  # a ModelService's canary pod says so
    assert samples['slimserve_requests_total{code="200",endpoint="infer",protocol="rest"}'] >= 1
    assert samples['slimserve_request_duration_seconds_count{protocol="rest"}'] >= 1
