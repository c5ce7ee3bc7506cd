"""The `kubernetes` auth mode of a real `slimserve serve` process against the real test API server: callers'
ServiceAccount tokens checked by TokenReview, their right by LocalSubjectAccessReview, answers cached, and an
API server that does not answer is a 503, never a 401."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.cluster.controlplane import write_kubeconfig
from tests.serving.kube_auth_helpers import auth_namespace, caller_tokens, grant_reviews, service_account_token
from tests.serving.serving_helpers import ServerProcess, metric_samples, request

pytestmark = pytest.mark.cluster

MODEL = "digits-mlp"
SERVICE = "digits"  # the ModelService whose `get` a caller needs (no such object is needed for RBAC to answer)
INFER_PATH = f"/v2/models/{MODEL}/infer"
ROW = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}).encode()
TOKEN_REVIEWS = 'slimserve_auth_reviews_total{kind="TokenReview",outcome="answered"}'


@pytest.fixture(scope="module")
def cluster_namespace(control_plane):
    yield from auth_namespace(control_plane, "serving-auth")


@pytest.fixture(scope="module")
def tokens(control_plane, cluster_namespace):
    return caller_tokens(control_plane, cluster_namespace, SERVICE)


@pytest.fixture(scope="module")
def server_kubeconfig(control_plane, cluster_namespace):
    """The server's own identity, with the rights it is granted: create TokenReviews (cluster-wide) and
    LocalSubjectAccessReviews (in its namespace)."""
    service_account_token(control_plane, cluster_namespace, "server")
    grant_reviews(control_plane, cluster_namespace, "server")
    return control_plane.service_account_kubeconfig(cluster_namespace, "server")


def _serve(server_logs, namespace: str, kubeconfig, *args: str) -> ServerProcess:
    return ServerProcess(f"builtin://{MODEL}", server_logs, "--auth-mode", "kubernetes", "--auth-namespace", namespace,
                         "--auth-resource-name", SERVICE, *args, env={"KUBECONFIG": str(kubeconfig)}).start()


@pytest.fixture(scope="module")
def server(server_logs, cluster_namespace, server_kubeconfig, tokens):
    process = _serve(server_logs, cluster_namespace, server_kubeconfig)
    yield process
    process.stop()


def infer(server, token: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    status, _headers, body = request(server.http_url, "POST", INFER_PATH, ROW, headers)
    return status, json.loads(body)


def test_a_caller_with_the_right_is_served_and_the_answer_cached(server, tokens):
    before = metric_samples(server.http_url).get(TOKEN_REVIEWS, 0)
    for _ in range(5):
        status, body = infer(server, tokens["reader"])
        assert status == 200, body
    tensor = grpcclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
    result = grpcclient.InferenceServerClient(server.grpc_url).infer(
        MODEL, [tensor], headers={"authorization": f"Bearer {tokens['reader']}"})
    assert result.as_numpy("logits").shape == (1, 10)
    # Six requests over two protocols, one review of the token: the rest came from the cache.
    assert metric_samples(server.http_url)[TOKEN_REVIEWS] - before == 1


def test_a_valid_token_without_the_right_is_403(server, tokens):
    status, body = infer(server, tokens["stranger"])
    assert status == 403, body
    assert "system:serviceaccount:" in body["error"] and "get modelservices" in body["error"]
    tensor = grpcclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
    with pytest.raises(grpcclient.InferenceServerException) as refused:
        grpcclient.InferenceServerClient(server.grpc_url).infer(
            MODEL, [tensor], headers={"authorization": f"Bearer {tokens['stranger']}"})
    assert refused.value.status() == "StatusCode.PERMISSION_DENIED"
    assert metric_samples(server.http_url)['slimserve_auth_failures_total{protocol="rest",reason="forbidden"}'] >= 1


@pytest.mark.parametrize("token, reason", [(None, "missing"), ("not.a.jwt", "invalid"), ("x" * 900, "invalid")],
                         ids=["missing", "malformed", "unknown"])
def test_a_missing_or_invalid_token_is_401(server, token, reason):
    status, body = infer(server, token)
    assert status == 401, body
    assert metric_samples(server.http_url)[f'slimserve_auth_failures_total{{protocol="rest",reason="{reason}"}}'] >= 1


def test_health_and_metrics_need_no_token(server):
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        assert request(server.http_url, "GET", path)[0] == 200


def test_an_api_server_that_does_not_answer_is_503_not_401(server_logs, control_plane, cluster_namespace, tokens,
                                                          tmp_path):
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers a byte
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        kubeconfig = write_kubeconfig(tmp_path / "silent.kubeconfig", f"https://127.0.0.1:{silent.getsockname()[1]}",
                                      control_plane.workdir / "pki" / "ca.crt", "server", token="unused")
        process = _serve(server_logs, cluster_namespace, kubeconfig, "--auth-review-timeout-s", "1")
        try:
            status, body = infer(process, tokens["reader"])
            assert status == 503, body
            assert "did not answer" in body["error"]
            samples = metric_samples(process.http_url)
            assert samples['slimserve_auth_failures_total{protocol="rest",reason="unavailable"}'] == 1
            assert samples['slimserve_auth_reviews_total{kind="TokenReview",outcome="error"}'] == 1
            status, _body = infer(process, tokens["reader"])  # not cached: asked again
            assert status == 503
            assert metric_samples(process.http_url)['slimserve_auth_reviews_total{kind="TokenReview",outcome="error"}'] == 2
        finally:
            process.stop()
