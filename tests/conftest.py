"""Fixtures shared by the test suite."""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # so "tests.cluster" imports however pytest is started
    sys.path.insert(0, _ROOT)

# The local Kubernetes control plane: control_plane (session), namespace (per test).
from tests.cluster.fixtures import control_plane, namespace  # noqa: E402,F401
