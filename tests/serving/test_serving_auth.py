"""API keys on a real `slimserve serve` process: REST, gRPC (tritonclient) and gRPC-Web need a key of the
mounted directory; health and /metrics do not; failures are 401 / UNAUTHENTICATED, counted by reason, and
no key ever reaches the log. Malformed entries are refused naming the entry."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slimserve.serving.auth import ApiKeyChecker, read_api_keys
from slimserve.serving.auth_options import AuthSetupError
from slimserve.serving.errors import Unauthenticated
from tests.serving.serving_helpers import ServerProcess, metric_samples, request
from tests.web import grpc_web_helpers
from tritonclient.grpc import service_pb2

MODEL = "digits-mlp"
ALICE_KEY = "alice-7f3c9e0b-key"
BOB_KEY = "bob-11aa42-key"
WRONG_KEY = "not-a-key-of-this-server"
INFER_PATH = f"/v2/models/{MODEL}/infer"
ROW = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}


def entry(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def write_keys(directory, keys: dict[str, str]) -> None:
    directory.mkdir(exist_ok=True)
    for name, text in keys.items():
        (directory / name).write_text(text)


@pytest.fixture(scope="module")
def server(tmp_path_factory, server_logs):
    keys = tmp_path_factory.mktemp("api-keys")
    write_keys(keys, {"alice": entry(ALICE_KEY), "bob": entry(BOB_KEY) + "\n"})
    process = ServerProcess(f"builtin://{MODEL}", server_logs, "--auth-mode", "apiKeys", "--auth-api-keys-dir",
                            str(keys), "--grpc-web", "--access-log").start()
    yield process
    process.stop()


def infer(server, headers: dict[str, str]) -> tuple[int, dict, dict]:
    status, answer_headers, body = request(server.http_url, "POST", INFER_PATH, json.dumps(ROW).encode(),
                                           {"Content-Type": "application/json", **headers})
    return status, answer_headers, json.loads(body)


def test_rest_takes_a_key_as_bearer_or_x_api_key(server):
    for headers in ({"Authorization": f"Bearer {ALICE_KEY}"}, {"X-API-Key": BOB_KEY},
                    {"authorization": f"bearer {BOB_KEY}"}):
        status, _headers, body = infer(server, headers)
        assert status == 200, (headers, body)
        assert body["outputs"][0]["shape"] == [1, 10]


def test_rest_refuses_a_missing_malformed_or_wrong_key_with_401(server):
    before = metric_samples(server.http_url)
    cases = {
        "missing": {},
        "malformed": {"Authorization": f"Basic {ALICE_KEY}"},
        "invalid": {"X-API-Key": WRONG_KEY},
    }
    for reason, headers in cases.items():
        status, answer_headers, body = infer(server, headers)
        assert status == 401, (reason, body)
        assert set(body) == {"error"} and body["error"], body  # the OIP error body
        assert answer_headers["www-authenticate"].startswith("Bearer")
    status, _headers, body = infer(server, {"Authorization": f"Bearer {ALICE_KEY[:-1]}"})
    assert status == 401 and "not valid" in body["error"]
    after = metric_samples(server.http_url)
    for reason, added in (("missing", 1), ("malformed", 1), ("invalid", 2)):
        key = f'slimserve_auth_failures_total{{protocol="rest",reason="{reason}"}}'
        assert after[key] - before.get(key, 0) == added, key
    # Metadata and model readiness are behind the key too.
    assert request(server.http_url, "GET", f"/v2/models/{MODEL}")[0] == 401
    assert request(server.http_url, "GET", f"/v2/models/{MODEL}", headers={"X-API-Key": ALICE_KEY})[0] == 200


def test_health_and_metrics_need_no_key(server):
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        assert request(server.http_url, "GET", path)[0] == 200, path
    with grpc.insecure_channel(server.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_server_live() and client.is_server_ready()


def _grpc_infer(server, headers: dict[str, str] | None):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
    return client.infer(MODEL, [tensor], headers=headers)


def test_grpc_takes_the_key_in_authorization_metadata(server):
    result = _grpc_infer(server, {"authorization": f"Bearer {ALICE_KEY}"})
    assert result.as_numpy("logits").shape == (1, 10)
    assert _grpc_infer(server, {"x-api-key": BOB_KEY}).as_numpy("logits").shape == (1, 10)


@pytest.mark.parametrize("headers", [None, {"authorization": f"Bearer {WRONG_KEY}"}, {"authorization": "Bearer"}],
                         ids=["missing", "wrong", "malformed"])
def test_grpc_refuses_without_a_valid_key(server, headers):
    with pytest.raises(grpcclient.InferenceServerException) as refused:
        _grpc_infer(server, headers)
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(grpcclient.InferenceServerException) as refused:
        grpcclient.InferenceServerClient(server.grpc_url).get_model_metadata(MODEL, headers=headers)
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"


def test_grpc_web_checks_the_key_as_grpc_does(server):
    message = service_pb2.ModelMetadataRequest(name=MODEL)
    body = grpc_web_helpers.frame(message.SerializeToString())
    refused = grpc_web_helpers.call(server.http_url, "ModelMetadata", body)
    assert refused.status == grpc.StatusCode.UNAUTHENTICATED.value[0], refused
    allowed = grpc_web_helpers.call(server.http_url, "ModelMetadata", body,
                                    headers={"authorization": f"Bearer {ALICE_KEY}"})
    assert allowed.status == 0 and service_pb2.ModelMetadataResponse.FromString(allowed.messages[0]).name == MODEL
    live = grpc_web_helpers.call(server.http_url, "ServerLive", grpc_web_helpers.frame(b""))
    assert live.status == 0
    samples = metric_samples(server.http_url)
    assert samples['slimserve_auth_failures_total{protocol="grpc-web",reason="missing"}'] >= 1


def test_access_log_records_refusals_and_never_a_key(server):
    marker = "refused-request-7781"
    status, _headers, _body = infer(server, {"X-API-Key": WRONG_KEY, "X-Request-Id": marker})
    assert status == 401
    deadline = time.monotonic() + 10
    while marker not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)  # the access log's writer flushes a few times a second
    line = next(json.loads(text) for text in server.log().splitlines() if marker in text)
    assert line["status"] == 401 and line["protocol"] == "rest"
    for secret in (ALICE_KEY, BOB_KEY, WRONG_KEY):
        assert secret not in server.log()


# ---- the key directory ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, problem", [
    ("sha256:" + "ab" * 31, "the digest has 62 hex digits, not 64"),
    ("sha256:" + "zz" * 32, "the digest is not hexadecimal"),
    ("ab" * 32, "does not start with sha256:"),
    ("", "does not start with sha256:"),
])
def test_a_malformed_entry_is_refused_naming_it(tmp_path, text, problem):
    write_keys(tmp_path, {"alice": entry(ALICE_KEY), "ci-robot": text})
    with pytest.raises(AuthSetupError, match=f"API key entry 'ci-robot': {problem}"):
        read_api_keys(tmp_path)


def test_a_directory_without_entries_is_refused(tmp_path):
    (tmp_path / "..data").mkdir()  # a Secret volume's own folder is not an entry
    with pytest.raises(AuthSetupError, match="no entries .* the Secret is missing or has no keys"):
        read_api_keys(tmp_path)
    with pytest.raises(AuthSetupError, match="not a directory"):
        read_api_keys(tmp_path / "absent")


def test_a_removed_entry_is_revoked_on_reload(tmp_path):
    write_keys(tmp_path, {"alice": entry(ALICE_KEY), "bob": entry(BOB_KEY)})
    checker = ApiKeyChecker(tmp_path, reload_interval_s=0)
    assert asyncio.run(checker.caller(BOB_KEY)) == "bob"
    (tmp_path / "bob").unlink()
    with pytest.raises(Unauthenticated):
        asyncio.run(checker.caller(BOB_KEY))
    assert asyncio.run(checker.caller(ALICE_KEY)) == "alice"
    (tmp_path / "carol").write_text("sha256:12")  # a broken update keeps the keys in force
    assert asyncio.run(checker.caller(ALICE_KEY)) == "alice"


def test_the_server_does_not_start_with_a_malformed_entry(tmp_path, server_logs):
    write_keys(tmp_path, {"ci-robot": "sha256:1234"})
    process = ServerProcess(f"builtin://{MODEL}", server_logs, "--auth-mode", "apiKeys",
                            "--auth-api-keys-dir", str(tmp_path))
    with pytest.raises(RuntimeError, match="exited with 1"):
        process.start(timeout_s=60)
    assert "API key entry 'ci-robot': the digest has 4 hex digits, not 64" in process.log()
