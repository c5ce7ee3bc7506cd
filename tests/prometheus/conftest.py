"""A real Prometheus (tests/prometheus/server.py) on loopback for each test that starts one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.prometheus.server import Prometheus, built_binary, static_targets


@pytest.fixture(scope="session")
def prometheus_binary() -> Path:
    return built_binary()


@pytest.fixture
def start_prometheus(prometheus_binary, tmp_path) -> Iterator[Callable[[list[tuple[str, dict[str, str]]]], Prometheus]]:
    """start_prometheus([(address, labels), ...]) -> a ready Prometheus scraping those targets every second."""
    started: list[Prometheus] = []

    def start(targets: list[tuple[str, dict[str, str]]]) -> Prometheus:
        work = tmp_path / f"prometheus-{len(started)}"
        work.mkdir()
        prometheus = Prometheus(prometheus_binary, work, static_targets(targets))
        started.append(prometheus)
        prometheus.wait_ready()
        return prometheus

    yield start
    for prometheus in started:
        prometheus.stop()
