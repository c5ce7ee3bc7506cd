"""Servers shared by the serving tests: real `slimserve serve` processes, started on first use."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_helpers import ServerProcess  # noqa: E402

# The error battery runs against this limit and body size.
ERROR_SERVER_MAX_BATCH = 8
ERROR_SERVER_MAX_BODY = 64 * 1024


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
        "--max-body-bytes", str(ERROR_SERVER_MAX_BODY), "--max-latency-ms", "20",
    )


@pytest.fixture(scope="session")
def cnn_server(server_logs):
    yield from _serve(server_logs, "builtin://digits-cnn", "--model-name", "digits")


@pytest.fixture(scope="session")
def minilm_server(server_logs):
    yield from _serve(server_logs, "builtin://minilm-l6")
