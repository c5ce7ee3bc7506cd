"""Servers shared by the serving tests: real `slimserve serve` processes, started on first use."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_helpers import ERROR_SERVER_MAX_BATCH, ERROR_SERVER_MAX_BODY, ServerProcess, compress  # noqa: E402


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-logs")


def _serve(server_logs: Path, artifact: str, *args: str):
    server = ServerProcess(artifact, server_logs, *args).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlp_server(server_logs):
    """The tiny digits MLP with small limits, for the error battery and the batching checks."""
    yield from _serve(
        server_logs, "builtin://digits-mlp", "--max-batch-size", str(ERROR_SERVER_MAX_BATCH),
        "--max-body-bytes", str(ERROR_SERVER_MAX_BODY), "--max-latency-ms", "20", "--model-version", "canary",
    )


@pytest.fixture(scope="session")
def cnn_server(server_logs):
    yield from _serve(server_logs, "builtin://digits-cnn", "--model-name", "digits")


@pytest.fixture(scope="session")
def minilm_server(server_logs):
    yield from _serve(server_logs, "builtin://minilm-l6")


@pytest.fixture(scope="session")
def cnn_artifact(tmp_path_factory) -> str:
    """A real SlimServe artifact (safetensors + manifest with digests) of the digits CNN."""
    from slimserve.artifacts import save_artifact
    from slimserve.models.loading import load_builtin

    loaded = load_builtin("builtin://digits-cnn")
    uri = f"file://{tmp_path_factory.mktemp('artifacts') / 'digits-cnn-slim'}"
    save_artifact(uri, family=loaded.family.name, recipe=loaded.recipe, tensors=loaded.model.state_dict(), source=loaded.source)
    return uri


@pytest.fixture(scope="session")
def artifact_server(server_logs, cnn_artifact):
    from slimserve.artifacts import load_artifact

    # Pinned to its digest, as the operator pins the artifact of a CompressionJob.
    yield from _serve(server_logs, cnn_artifact, "--artifact-digest", load_artifact(cnn_artifact).digest)


@pytest.fixture(scope="session")
def reference_model():
    """`load_servable` in this process, cached: the expected outputs of what the servers serve."""
    from slimserve.models import load_servable

    cache = {}

    def get(uri: str):
        if uri not in cache:
            cache[uri] = load_servable(uri)
        return cache[uri]

    return get


@pytest.fixture(scope="session")
def int8_artifact(tmp_path_factory) -> str:
    """An int8 artifact made by `slimserve compress` (dynamic quantization of the digits CNN)."""
    work = tmp_path_factory.mktemp("compress")
    uri = f"file://{work / 'digits-int8'}"
    spec = work / "job.yaml"
    spec.write_text(
        "model: {uri: 'builtin://digits-cnn'}\n"
        "steps: [{quantize: {method: int8-dynamic}}]\n"
        "evaluation: {metric: accuracy, maxDrop: 0.05}\n"
        f"output: {{uri: '{uri}'}}\n"
    )
    compress(spec)
    return uri


@pytest.fixture(scope="session")
def int8_server(server_logs, int8_artifact):
    yield from _serve(server_logs, int8_artifact, "--model-name", "digits-int8")
