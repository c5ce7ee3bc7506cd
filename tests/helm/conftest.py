"""Fixtures of the chart's cluster tests."""

from __future__ import annotations

import pytest

from tests.cluster.helpers import wait_established
from tests.helm.chart import CHART


@pytest.fixture(scope="session")
def chart_crds(control_plane) -> None:
    """The chart's CRDs (SlimServe's and Kopf's) installed and established."""
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    wait_established(control_plane, "compressionjobs.slimserve.io", "modelservices.slimserve.io", "batchinferences.slimserve.io",
                     "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
