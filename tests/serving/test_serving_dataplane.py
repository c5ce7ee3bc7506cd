"""The REST app and data plane in process: readiness while loading, and every error class's status code."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from slimserve.models.servable import ModelInfo, TensorSpec
from slimserve.serving import errors
from slimserve.serving.batching import Batcher, ModelCaller
from slimserve.serving.dataplane import DataPlane
from slimserve.serving.metrics import ServerMetrics
from slimserve.serving.model import ServedModel
from slimserve.serving.rest import build_app


class Doubler:
    info = ModelInfo(
        name="doubler", version="3",
        inputs=(TensorSpec("x", "FP32", (-1, 2)),), outputs=(TensorSpec("y", "FP32", (-1, 2)),),
    )

    def predict(self, inputs):
        return {"y": inputs["x"] * 2}


async def call(app, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    sent = []
    scope = {"type": "http", "method": method, "path": path, "headers": [(b"content-length", str(len(body)).encode())]}

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"])


@pytest.fixture
def executor():
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown()


def make_plane(servable, executor) -> DataPlane:
    metrics = ServerMetrics()
    model = ServedModel.from_servable(servable)
    return DataPlane(model, Batcher(ModelCaller(model.predict, executor, metrics), metrics), metrics, max_batch_size=4)


@pytest.fixture
def plane(executor):
    return make_plane(Doubler(), executor)


def test_while_the_model_loads_the_server_is_live_but_not_ready(plane):
    app = build_app(plane)
    infer = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}).encode()

    async def scenario():
        before = [await call(app, "GET", "/v2/health/live"), await call(app, "GET", "/v2/health/ready"),
                  await call(app, "POST", "/v2/models/doubler/infer", infer)]
        plane.model.load()
        after = [await call(app, "GET", "/v2/health/ready"), await call(app, "POST", "/v2/models/doubler/versions/3/infer", infer)]
        return before, after

    (live, ready, early), (ready_after, answer) = asyncio.run(scenario())
    assert live == (200, {"live": True}) and ready == (400, {"ready": False})
    assert early[0] == 503 and "not ready" in early[1]["error"]
    assert ready_after == (200, {"ready": True})
    assert answer[0] == 200 and answer[1]["outputs"][0]["data"] == [2.0, 4.0] and answer[1]["model_version"] == "3"


def test_a_shutting_down_server_reports_not_ready(plane):
    plane.model.load()
    plane.shutting_down = True
    assert asyncio.run(call(build_app(plane), "GET", "/v2/health/ready")) == (400, {"ready": False})


@pytest.mark.parametrize(
    ("error", "http", "code"),
    [
        (errors.InvalidInput("x"), 400, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ModelNotFound("x"), 404, grpc.StatusCode.NOT_FOUND),
        (errors.ModelNotReady("x"), 503, grpc.StatusCode.UNAVAILABLE),
        (errors.ServerNotReady("x"), 503, grpc.StatusCode.UNAVAILABLE),
        (errors.PayloadTooLarge("x"), 413, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.InferenceFailed("x"), 500, grpc.StatusCode.INTERNAL),
        (RuntimeError("secret detail"), 500, grpc.StatusCode.INTERNAL),
    ],
)
def test_each_error_maps_to_one_http_and_one_grpc_status(error, http, code):
    assert errors.http_status(error) == http and errors.grpc_status(error) == code
    if not isinstance(error, errors.ServingError):
        assert "secret detail" not in errors.client_message(error)  # internals stay in the log


class FlakyDoubler(Doubler):
    """Fails its second call (the first is the warm-up at load)."""

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, inputs):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("device lost")
        return super().predict(inputs)


def test_a_model_that_raises_gives_a_500_and_the_next_request_still_works(executor):
    plane = make_plane(FlakyDoubler(), executor)
    plane.model.load()
    app = build_app(plane)
    infer = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}).encode()

    async def scenario():
        return [await call(app, "POST", "/v2/models/doubler/infer", infer) for _ in range(2)]

    failed, recovered = asyncio.run(scenario())
    assert failed[0] == 500 and "RuntimeError" in failed[1]["error"]
    assert recovered == (200, recovered[1]) and recovered[1]["outputs"][0]["data"] == [2.0, 4.0]
