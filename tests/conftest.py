"""Fixtures shared by the test suite."""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # so "tests.cluster" imports however pytest is started
    sys.path.insert(0, _ROOT)

# The local Kubernetes control plane: control_plane (session), namespace (per test).
from tests.cluster.fixtures import control_plane, namespace  # noqa: E402,F401


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip, never fail, where the process sees no CUDA GPU."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import pytest
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible to this process")
        for item in gpu_tests:
            item.add_marker(skip)
