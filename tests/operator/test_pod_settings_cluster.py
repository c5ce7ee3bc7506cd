"""The chart's workload values, through the operator's configuration, on the real API server: compression and
server pods without fixed ids are admitted where the restricted Pod Security Standard is enforced, and log JSON."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.cluster.helpers import SOLO_NAMESPACE_PREFIX, apply, wait_for
from tests.helm.chart import operator_config, render

pytestmark = pytest.mark.cluster

VALUES = {"workloads": {"podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None}},
          "logging": {"format": "json"}}
JOB = {"apiVersion": "slimserve.io/v1alpha1", "kind": "CompressionJob", "metadata": {"name": "restricted"},
       "spec": {"model": {"uri": "builtin://digits-cnn"}, "steps": [{"quantize": {"method": "int8-dynamic"}}],
                "output": {"uri": "pvc://models/restricted"}}}
SERVICE = {"apiVersion": "slimserve.io/v1alpha1", "kind": "ModelService", "metadata": {"name": "restricted"},
           "spec": {"model": {"uri": "builtin://digits-cnn"}}}


def _pods(control_plane, namespace: str) -> dict[str, dict]:
    items = json.loads(control_plane.kubectl("get", "pods", "--namespace", namespace, "-o", "json").stdout)["items"]
    return {pod["metadata"]["labels"].get("app.kubernetes.io/component"): pod for pod in items}


def test_pods_without_fixed_ids_run_under_the_restricted_standard(control_plane, operator_factory, tmp_path):
    namespace = control_plane.create_namespace(f"{SOLO_NAMESPACE_PREFIX}restricted")  # only this operator acts here
    try:
        control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
        config = tmp_path / "operator.yaml"
        config.write_text(yaml.safe_dump(operator_config(render(VALUES))))  # the ConfigMap the chart renders
        operator_factory(extra_args=("--namespace", namespace, f"--config={config}"))
        apply(control_plane, namespace, JOB, SERVICE)
        pods = wait_for("a compression pod and a server pod, admitted",
                        lambda: (found := _pods(control_plane, namespace)).keys() >= {"compressor", "server"} and found)
    finally:
        control_plane.delete_namespace(namespace)
    for pod in (pods["compressor"], pods["server"]):
        assert pod["spec"]["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
        (container,) = pod["spec"]["containers"]
        assert "runAsUser" not in container["securityContext"]
        assert {"name": "SLIMSERVE_LOG_FORMAT", "value": "json"} in container["env"]
