"""Fixtures of the chart's cluster tests."""

from __future__ import annotations

import pytest

from tests.helm.chart import CHART


@pytest.fixture(scope="session")
def chart_crds(control_plane) -> None:
    """The chart's CRDs (SlimServe's and Kopf's) installed and established."""
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          "crd/compressionjobs.slimserve.io", "crd/modelservices.slimserve.io", "crd/batchinferences.slimserve.io",
                          "crd/clusterkopfpeerings.kopf.dev", "crd/kopfpeerings.kopf.dev")
