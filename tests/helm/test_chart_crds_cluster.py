"""crds.enabled on the real API server: helm upgrade really upgrades the CRDs, and uninstall keeps them and the
resources they hold."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tests.helm.chart import CHART, values_file

pytestmark = pytest.mark.cluster

COMPRESSION_JOBS = "compressionjobs.slimserve.io"
UPGRADED_COLUMN = {"name": "Model", "type": "string", "jsonPath": ".spec.model.uri",
                   "description": "Added by the test's copy of the chart."}
JOB = {"apiVersion": "slimserve.io/v1alpha1", "kind": "CompressionJob", "metadata": {"name": "kept"},
       "spec": {"model": {"uri": "builtin://digits-cnn"}, "steps": [{"quantize": {"method": "int8-dynamic"}}],
                "output": {"uri": "pvc://models/kept"}}}


def _crd(control_plane, name: str) -> dict:
    return json.loads(control_plane.kubectl("get", "crd", name, "-o", "json").stdout)


def _columns(crd: dict) -> list[str]:
    return [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]


@pytest.fixture
def chart_copy(control_plane, tmp_path):
    """A copy of the chart whose CRDs the test may change; the cluster's CRDs are the committed ones afterwards."""
    copy = tmp_path / "slimserve"
    shutil.copytree(CHART, copy)
    yield copy
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))


def test_templated_crds_are_upgraded_and_outlive_the_release(control_plane, namespace, chart_copy, tmp_path):
    release = f"crds-{namespace.rsplit('-', 1)[-1]}"
    values = values_file({"crds": {"enabled": True}, "operator": {"peering": {"name": f"peering-{namespace}"}}},
                         tmp_path)
    install = ("install", release, str(chart_copy), "--namespace", namespace, "--values", str(values))

    # crds/ holds the same CRDs and Helm creates those first, unowned: the templates take them over only when told.
    refused = control_plane.helm(*install, check=False)
    assert refused.returncode != 0 and "invalid ownership metadata" in refused.stderr, refused.stderr
    control_plane.helm(*install, "--take-ownership")
    crd = _crd(control_plane, COMPRESSION_JOBS)
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert "Model" not in _columns(crd)

    # A newer chart's CRD (one more printer column): plain `helm upgrade` applies it, and kubectl shows it.
    path = chart_copy / "crds" / f"{COMPRESSION_JOBS}.yaml"
    changed = yaml.safe_load(path.read_text())
    changed["spec"]["versions"][0]["additionalPrinterColumns"].insert(0, UPGRADED_COLUMN)
    path.write_text(yaml.safe_dump(changed, sort_keys=False))
    out = control_plane.helm("upgrade", release, str(chart_copy), "--namespace", namespace, "--values", str(values))
    assert "REVISION: 2" in out.stdout
    assert _columns(_crd(control_plane, COMPRESSION_JOBS))[0] == "Model"
    control_plane.kubectl("apply", "--namespace", namespace, "-f", "-", input=json.dumps(JOB))
    table = control_plane.kubectl("get", "compressionjobs", "--namespace", namespace).stdout
    assert table.split()[:2] == ["NAME", "MODEL"] and "builtin://digits-cnn" in table

    # Uninstall: the release is gone, the CRDs (kept) and the user's CompressionJob are not.
    control_plane.helm("uninstall", release, "--namespace", namespace, "--wait")
    assert control_plane.helm("list", "--namespace", namespace, "-q").stdout.strip() == ""
    for name in (COMPRESSION_JOBS, "modelservices.slimserve.io"):
        assert _crd(control_plane, name)["metadata"].get("deletionTimestamp") is None
    job = json.loads(control_plane.kubectl("get", "compressionjob", "kept", "--namespace", namespace,
                                           "-o", "json").stdout)
    assert job["spec"]["model"]["uri"] == "builtin://digits-cnn"
