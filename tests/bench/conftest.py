"""The benchmark tooling under test: the native load generators (built or installed by benchmarks/tools.sh)
against a real `slimserve serve`, and the report renderer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from tests.serving.serving_helpers import ServerProcess  # noqa: E402


@pytest.fixture(scope="session")
def load_generators() -> None:
    """ghz built (minutes the first time, then cached) and h2load installed."""
    subprocess.run([str(BENCHMARKS / "tools.sh")], check=True, timeout=3600)


@pytest.fixture(scope="session")
def bench_server(tmp_path_factory, load_generators):
    """The digits MLP over REST, gRPC and gRPC-Web."""
    server = ServerProcess("builtin://digits-mlp", tmp_path_factory.mktemp("bench-serve"), "--grpc-web").start()
    try:
        yield server
    finally:
        server.stop()
