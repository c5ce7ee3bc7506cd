"""pytest fixtures of the local control plane; tests/conftest.py registers them.

    control_plane  (session)   the running ControlPlane, started once per test session
    namespace      (function)  a fresh namespace; deleted afterwards without waiting

Tests that use them are marked ``@pytest.mark.cluster``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from .controlplane import ControlPlane


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    plane = ControlPlane.start()  # builds the binaries first if any is missing
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    prefix = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))[:40]
    name = control_plane.create_namespace(prefix)
    yield name
    control_plane.delete_namespace(name, wait=False)
