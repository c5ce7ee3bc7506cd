"""Dynamic batching end to end: concurrent requests are merged, and each gets exactly its own rows back."""

from __future__ import annotations

import json

import numpy as np

from conftest import ERROR_SERVER_MAX_BATCH
from serving_helpers import metric_samples, post_json, send_together

INFER = "/v2/models/digits-mlp/infer"


def body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()


def logits(document: dict) -> np.ndarray:
    output = next(o for o in document["outputs"] if o["name"] == "logits")
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def test_concurrent_requests_are_merged_and_each_gets_its_own_result(mlp_server):
    rng = np.random.default_rng(1)
    inputs = [rng.random((rows, 64), dtype=np.float32) * 16 for rows in [1, 2, 3, 1, 2, 1, 3, 1, 2, 1, 1, 2, 3, 1, 1, 2]]
    before = metric_samples(mlp_server.http_url)

    answers = send_together(mlp_server.http_url, [(INFER, body(x)) for x in inputs])

    after = metric_samples(mlp_server.http_url)
    calls = after["slimserve_batch_size_count"] - before["slimserve_batch_size_count"]
    rows = after["slimserve_batch_size_sum"] - before["slimserve_batch_size_sum"]
    assert rows == sum(len(x) for x in inputs)  # every row ran exactly once
    assert calls < len(inputs)  # ...in fewer model calls than requests
    # No model call was larger than the limit: the histogram has nothing above its 8 bucket.
    above_limit = after["slimserve_batch_size_count"] - after[f'slimserve_batch_size_bucket{{le="{float(ERROR_SERVER_MAX_BATCH)}"}}']
    assert above_limit == 0

    merged = 0
    for x, (status, answer) in zip(inputs, answers):
        assert status == 200, answer
        document = json.loads(answer)
        merged += document["parameters"]["batch_size"] > len(x)
        alone_status, alone = post_json(mlp_server.http_url, INFER, json.loads(body(x)))
        assert alone_status == 200
        np.testing.assert_allclose(logits(document), logits(alone), rtol=1e-5, atol=1e-5)
    assert merged > 0


def test_metrics_expose_the_autoscaling_and_queue_signals(mlp_server):
    samples = metric_samples(mlp_server.http_url)
    assert samples["slimserve_inflight_requests"] == 0  # nothing in flight between tests
    assert samples["slimserve_queue_depth"] == 0
    assert samples["slimserve_model_ready"] == 1
    assert samples['slimserve_requests_total{code="200",endpoint="infer",protocol="rest"}'] >= 1
    assert samples['slimserve_request_duration_seconds_count{protocol="rest"}'] >= 1
