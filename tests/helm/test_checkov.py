"""checkov's Kubernetes checks on the rendered chart: nothing fails unless the chart waives it with a reason."""

from __future__ import annotations

import pytest
import yaml

from tests.helm import checkov
from tests.helm.chart import render, template

# Each waiver is a `checkov.io/skipN` annotation in the chart, with its reason (see templates/deployment.yaml).
WAIVED = {"CKV_K8S_38", "CKV_K8S_43", "CKV_K8S_15"}
VARIANTS = {
    "defaults": {},
    "namespaced": {"operator": {"watchNamespaces": ["team-a", "team-b"]}},
    "monitoring": {"metrics": {"serviceMonitor": {"enabled": True}},
                   "networkPolicy": {"from": [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]}},
    "pinned": {"images": {"operator": {"digest": "sha256:" + "1" * 64}, "pullPolicy": "Always"}},
}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("rendered")
    for name, values in VARIANTS.items():
        (directory / f"{name}.yaml").write_text(template(values).stdout)
    return checkov.scan(directory)


def test_no_check_fails(report):
    failed = [(c["check_id"], c["check_name"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert not failed
    assert report["summary"]["passed"] > 100  # the Kubernetes checks did run on every object
    assert report["summary"]["parsing_errors"] == 0


def test_every_waiver_is_intended_and_explained(report):
    skipped = report["results"]["skipped_checks"]
    assert {c["check_id"] for c in skipped} <= WAIVED
    for check in skipped:
        assert len(check["check_result"].get("suppress_comment") or "") > 20, check["check_id"]


def test_the_scan_catches_a_weakened_deployment(tmp_path):
    """Not vacuous: the same scan fails the operator Deployment once its hardening is removed."""
    objects = render()
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    del pod["securityContext"]
    del pod["containers"][0]["securityContext"]
    (tmp_path / "weak.yaml").write_text(yaml.safe_dump_all(objects))
    failed = {c["check_id"] for c in checkov.scan(tmp_path)["results"]["failed_checks"]}
    assert {"CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_37"} <= failed
