"""Security contexts and log format values on the real API server: the operator's pod without fixed ids is still
admitted by the restricted Pod Security Standard, and runs with the flags the values give."""

from __future__ import annotations

import json

import pytest

from tests.cluster.helpers import wait_for
from tests.helm.chart import CHART, values_file
from tests.helm.test_chart_security import PLATFORM_IDS

pytestmark = pytest.mark.cluster


def test_install_without_fixed_ids_under_the_restricted_standard(control_plane, chart_crds, namespace, tmp_path):
    control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    release = f"ids-{namespace.rsplit('-', 1)[-1]}"
    values = values_file({**PLATFORM_IDS, "logging": {"format": "json"},
                          "operator": {**PLATFORM_IDS["operator"], "peering": {"name": f"peering-{namespace}"}}},
                         tmp_path)
    control_plane.helm("install", release, str(CHART), "--namespace", namespace, "--values", str(values))
    try:
        pods = wait_for("the operator pod, admitted", lambda: json.loads(control_plane.kubectl(
            "get", "pods", "--namespace", namespace, "-l", f"app.kubernetes.io/instance={release}", "-o", "json",
        ).stdout)["items"])
        pod = pods[0]["spec"]
        assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
        container = pod["containers"][0]
        assert "runAsUser" not in container["securityContext"] and container["securityContext"]["runAsNonRoot"]
        assert "--log-format=json" in container["args"]
    finally:
        control_plane.helm("uninstall", release, "--namespace", namespace, "--wait")
