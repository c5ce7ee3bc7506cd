"""crds.enabled and crds.keep, rendered by the real Helm CLI: the CRDs as templates are crds/'s, which are the models'."""

from __future__ import annotations

import pytest
import yaml

from slimserve.api.crd import all_crds
from tests.helm.chart import CHART, find, render
from tests.helm.chart import template as helm_template

SLIMSERVE_CRDS = {"compressionjobs.slimserve.io", "modelservices.slimserve.io", "batchinferences.slimserve.io"}
KEEP = "helm.sh/resource-policy"


def _templated_crds(values: dict) -> dict[str, dict]:
    return {c["metadata"]["name"]: c for c in find(render(values), "CustomResourceDefinition")}


def test_by_default_the_crds_come_from_the_crds_folder_only():
    """Today's install: Helm creates crds/ once; no template renders a CRD, so upgrades leave them alone."""
    assert not find(render(), "CustomResourceDefinition")
    installed = {c["metadata"]["name"] for c in find(render(None, "--include-crds"), "CustomResourceDefinition")}
    assert SLIMSERVE_CRDS <= installed


def test_enabled_renders_the_generated_crds_as_release_objects():
    crds = _templated_crds({"crds": {"enabled": True}})
    assert set(crds) == SLIMSERVE_CRDS  # Kopf's stay in crds/: the peering objects need them before the templates
    generated = {c["metadata"]["name"]: c for c in all_crds()}
    for name, crd in crds.items():
        committed = yaml.safe_load((CHART / "crds" / f"{name}.yaml").read_text())
        assert crd["spec"] == committed["spec"] == generated[name]["spec"]
        labels = crd["metadata"]["labels"]
        assert committed["metadata"]["labels"].items() <= labels.items()
        assert labels["app.kubernetes.io/managed-by"] == "Helm" and labels["app.kubernetes.io/instance"] == "slimserve"
        assert crd["metadata"]["annotations"] == {KEEP: "keep"}


def test_without_keep_an_uninstall_deletes_them():
    crds = _templated_crds({"crds": {"enabled": True, "keep": False}})
    assert set(crds) == SLIMSERVE_CRDS
    assert all(KEEP not in (c["metadata"].get("annotations") or {}) for c in crds.values())


def test_common_labels_reach_the_templated_crds():
    crds = _templated_crds({"crds": {"enabled": True}, "commonLabels": {"team": "ml-platform"}})
    assert all(c["metadata"]["labels"]["team"] == "ml-platform" for c in crds.values())


@pytest.mark.parametrize("values,field", [({"crds": {"enable": True}}, "enable"), ({"crds": {"keep": "yes"}}, "keep")])
def test_bad_crds_values_are_rejected(values, field):
    out = helm_template(values, check=False)
    assert out.returncode != 0 and "values don't meet the specifications of the schema" in out.stderr
    assert field in out.stderr, out.stderr
