"""Fixtures shared by the test suite."""

import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # so "tests.cluster" imports however pytest is started
    sys.path.insert(0, _ROOT)

# The local Kubernetes control plane: control_plane (session), namespace (per test).
from tests.cluster.fixtures import control_plane, namespace  # noqa: E402,F401
from tests.work_units import hand_out_order, module_scheduling  # noqa: E402


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """With -n: each module one unit of work, the real node's and podman's tests one together (tests/work_units.py)."""
    return module_scheduling(config, log) if config.getvalue("dist") == "loadscope" else None


def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):  # an xdist worker: its collection order is the order units are handed out
        items.sort(key=lambda item: hand_out_order(item.nodeid))
    _skip_gpu_tests_without_a_gpu(items)


def _skip_gpu_tests_without_a_gpu(items):
    """Tests marked `gpu` skip, never fail, where the process sees no CUDA GPU."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible to this process")
        for item in gpu_tests:
            item.add_marker(skip)
