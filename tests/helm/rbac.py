"""Running the operator the way the chart deploys it, for the RBAC tests.

The chart is installed on the real API server; the operator runs as a process with a token of the chart's
ServiceAccount (TokenRequest API), so with exactly the chart's rules. Its own pod cannot run on kwok's fake
nodes, so the process stands in for it: the Deployment's arguments, the chart's ConfigMap as its configuration
file, the same identity. The release's images are named after it, so the Job and Deployment it makes are told
apart from any other operator's.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path


from tests.helm.chart import CHART, values_file
from tests.cluster.helpers import apply, condition, exists, get, wait_for
from tests.operator.conftest import OperatorProcess

POD_ANNOTATIONS = "slimserve.io/pod-annotations"
KEEP_RUNNING = json.dumps({"slimserve.io/test-outcome": "run"})  # kwok keeps the compression pod running
# Flags of the chart's Deployment that the stand-in process sets itself (ports and the config file path).
PROCESS_OWN_FLAGS = ("--liveness", "--config", "--metrics-port")
# The chart grants no cluster-wide reads of CRDs or namespaces. Kopf asks, is refused, and falls back: to the
# kinds API discovery listed at start, and to the namespaces it was given.
KOPF_OBSERVATION = re.compile(r'cannot (list|watch) resource "(customresourcedefinitions|namespaces)" in API group '
                              r'"[\w.]*" at the cluster scope')
KOPF_FALLBACK = "Not enough permissions to watch for resources"
# Also 403, but not a matter of rights: a write into a namespace being deleted (another module's, say).
NAMESPACE_TERMINATING = "because it is being terminated"


def compression_job(name: str) -> dict:
    return {
        "apiVersion": "slimserve.io/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": name, "annotations": {POD_ANNOTATIONS: KEEP_RUNNING}},
        "spec": {
            "model": {"uri": "builtin://digits-cnn"},
            "steps": [{"quantize": {"method": "int8-dynamic"}}],
            "output": {"uri": f"s3://models/{name}"},  # no PersistentVolumeClaim needed
        },
    }


def model_service(name: str) -> dict:
    return {
        "apiVersion": "slimserve.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name},
        "spec": {"model": {"uri": "builtin://digits-cnn"},
                 "autoscaling": {"metric": "cpu", "minReplicas": 2, "maxReplicas": 4}},
    }


@dataclass
class Installed:
    """A release of the chart and the operator running with its ServiceAccount's token."""

    release: str
    namespace: str
    kubeconfig: Path
    operator: OperatorProcess

    def forbidden_lines(self) -> list[str]:
        # A 403 as a status, not the milliseconds of a log timestamp ("08:21:39,403").
        return [line for line in self.operator.logs().splitlines() if re.search(r"forbidden|(?<![,.:])\b403\b", line, re.I)]

    def unexpected_refusals(self) -> list[str]:
        """Refused calls in the operator's log other than Kopf's observation of the cluster and writes into a
        terminating namespace."""
        return [line for line in self.forbidden_lines()
                if not KOPF_OBSERVATION.search(line) and NAMESPACE_TERMINATING not in line]


def install_and_run(control_plane, tmp_path: Path, release: str, values: dict) -> Installed:
    namespace = control_plane.create_namespace(f"{release}-system")
    images = {key: {"repository": f"chart.test/{release}/{key.lower()}"}
              for key in ("operator", "compressor", "compressorGpu", "server", "serverGpu")}
    values = {**values, "images": images,
              "operator": {**values.get("operator", {}), "peering": {"name": f"{release}-{namespace}"}}}
    control_plane.helm("install", release, str(CHART), "--namespace", namespace,
                       "--values", str(values_file(values, tmp_path)))
    deployment = get(control_plane, namespace, "deployment", f"{release}-slimserve")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    kubeconfig = control_plane.service_account_kubeconfig(namespace, pod["serviceAccountName"])
    args = [a for a in container["args"] if not a.startswith(PROCESS_OWN_FLAGS)]
    operator = OperatorProcess(control_plane, tmp_path / "operator", kubeconfig=kubeconfig, extra_args=tuple(args),
                               metrics=True)
    config = get(control_plane, namespace, "configmap", f"{release}-slimserve")["data"]["operator.yaml"]
    operator.config_path.write_text(config)  # the chart's configuration, not the test default
    operator.start()
    return Installed(release, namespace, kubeconfig, operator)


def stop(control_plane, installed: Installed) -> None:
    installed.operator.stop()
    if os.environ.get("SLIMSERVE_SHOW_OPERATOR_LOG"):
        sys.stderr.write(installed.operator.logs())
    control_plane.helm("uninstall", installed.release, "--namespace", installed.namespace, check=False)


def can_i(control_plane, kubeconfig: Path, *request: str) -> bool:
    out = control_plane.kubectl("auth", "can-i", *request, kubeconfig=kubeconfig, check=False)
    return out.stdout.strip() == "yes"


def assert_forbidden(control_plane, kubeconfig: Path, *request: str) -> None:
    out = control_plane.kubectl(*request, kubeconfig=kubeconfig, check=False)
    assert out.returncode != 0
    assert "forbidden" in out.stderr.lower() and "cannot" in out.stderr, out.stderr


def image_of(control_plane, namespace: str, kind: str, name: str) -> str:
    return get(control_plane, namespace, kind, name)["spec"]["template"]["spec"]["containers"][0]["image"]


def assert_compression_job_runs(control_plane, installed: Installed, namespace: str, name: str) -> None:
    """The operator made the Job and the pod's own ServiceAccount, Role and RoleBinding, and reports Running."""
    wait_for(f"Job {name}-g1", lambda: exists(control_plane, namespace, "job", f"{name}-g1"))
    assert image_of(control_plane, namespace, "job", f"{name}-g1").startswith(f"chart.test/{installed.release}/")
    for kind in ("serviceaccount", "role", "rolebinding"):
        assert exists(control_plane, namespace, kind, f"{name}-compressor"), kind
    wait_for(f"{name} Running",
             lambda: get(control_plane, namespace, "compressionjob", name).get("status", {}).get("phase") == "Running")


def assert_model_service_ready(control_plane, installed: Installed, namespace: str, name: str) -> dict:
    """Deployment, Service, HPA and PDB exist and the ModelService is Ready; returns the live object."""
    def ready():
        obj = get(control_plane, namespace, "modelservice", name)
        return obj if condition(obj.get("status") or {}, "Ready").get("status") == "True" else None

    live = wait_for(f"ModelService {name} Ready", ready, timeout=90)
    assert image_of(control_plane, namespace, "deployment", name).startswith(f"chart.test/{installed.release}/")
    for kind in ("deployment", "service", "horizontalpodautoscaler", "poddisruptionbudget"):
        assert exists(control_plane, namespace, kind, name), kind
    return live


def release_fixture(control_plane, tmp_path: Path, release: str, values: dict):
    installed = install_and_run(control_plane, tmp_path, release, values)
    try:
        yield installed
    finally:
        stop(control_plane, installed)
