"""Fixtures of the browser-facing tests: servers with gRPC-Web, the Node test project, headless Chromium.

Node packages and Chromium come from tests/web/install.sh (run by `make test`). Without them these tests
skip when run by hand, and fail under CI (CI=true), where a missing install step must not pass silently.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.serving.serving_helpers import ServerProcess
from tests.web.web_helpers import ALLOWED_ORIGIN, NODE_PROJECT, rest_json

CHROMIUM = Path("/usr/bin/chromium")


def _require(ready: bool, what: str) -> None:
    if ready:
        return
    message = f"{what} missing: run tests/web/install.sh"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def node_project() -> Path:
    _require(shutil.which("node") is not None, "node")
    _require((NODE_PROJECT / "node_modules" / "grpc-web").is_dir(), "the Node test project's packages")
    return NODE_PROJECT


@pytest.fixture(scope="session")
def chromium(node_project) -> Path:
    _require(os.access(CHROMIUM, os.X_OK), str(CHROMIUM))
    _require((node_project / "node_modules" / "playwright-core").is_dir(), "playwright-core")
    return CHROMIUM


@pytest.fixture(scope="session")
def web_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("web-serve-logs")


def _serve(web_logs: Path, artifact: str, *args: str, env: dict[str, str] | None = None):
    server = ServerProcess(artifact, web_logs, *args, env=env).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def digits_web_server(web_logs):
    """digits-mlp with the playground (so gRPC-Web) and CORS open to one origin, all set by flags."""
    yield from _serve(web_logs, "builtin://digits-mlp", "--playground", "--cors-origin", ALLOWED_ORIGIN)


@pytest.fixture(scope="session")
def minilm_web_server(web_logs):
    """MiniLM with the playground turned on through the environment, as the operator does; CORS closed."""
    yield from _serve(web_logs, "builtin://minilm-l6", env={"SLIMSERVE_PLAYGROUND": "true"})


@pytest.fixture(scope="session")
def plain_server(web_logs):
    """digits-mlp with no browser extras: the default."""
    yield from _serve(web_logs, "builtin://digits-mlp")


@pytest.fixture(scope="session")
def digit_samples(digits_web_server) -> list[dict]:
    """The sample digits the playground offers (label, 64 pixels), from its config.json."""
    status, config = rest_json(digits_web_server, "GET", "/playground/config.json")
    assert status == 200
    return config["samples"]
