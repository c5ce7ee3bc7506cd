"""The chart against the real API server of the test cluster: schema-valid objects, install, upgrade, uninstall."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.helm.chart import CHART, render, template, values_file

pytestmark = pytest.mark.cluster


def server_dry_run(control_plane, manifest: str):
    return control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)


def test_rendered_chart_passes_the_api_servers_validation(control_plane, chart_crds, namespace):
    """`kubectl apply --dry-run=server`: the real API server validates every object with its real schemas."""
    other = control_plane.create_namespace("watched")
    try:
        for values in ({}, {"operator": {"watchNamespaces": [namespace, other]}}):
            manifest = template(values, "--namespace", namespace).stdout
            out = server_dry_run(control_plane, manifest)
            assert out.returncode == 0, out.stderr
            assert "(server dry run)" in out.stdout
    finally:
        control_plane.delete_namespace(other)


def test_the_api_server_rejects_what_the_schema_would_not(control_plane, chart_crds, namespace):
    """The dry run is a real check: an object with a field the API does not know fails it."""
    objects = render({}, "--namespace", namespace)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] = True
    out = control_plane.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-",
                                input=yaml.safe_dump(deployment), check=False)
    assert out.returncode != 0 and "readOnlyRootFs" in out.stderr


def _installed(control_plane, namespace: str, release: str) -> dict[str, dict]:
    manifest = control_plane.helm("get", "manifest", release, "--namespace", namespace).stdout
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in yaml.safe_load_all(manifest) if o}


def _live(control_plane, namespace: str, kind: str, name: str) -> dict:
    return json.loads(control_plane.kubectl("get", "-n", namespace, kind, name, "-o", "json").stdout)


def test_install_upgrade_uninstall(control_plane, chart_crds, namespace, tmp_path):
    release = "lifecycle"
    peering = {"operator": {"peering": {"name": f"peering-{namespace}"}}}
    first = values_file(peering, tmp_path)
    out = control_plane.helm("install", release, str(CHART), "--namespace", namespace, "--values", str(first))
    assert "STATUS: deployed" in out.stdout
    assert f'installed as release "{release}" in namespace "{namespace}"' in out.stdout  # NOTES.txt
    objects = _installed(control_plane, namespace, release)
    assert {key.split("/")[0] for key in objects} == {"ServiceAccount", "ConfigMap", "ClusterRole",
                                                      "ClusterRoleBinding", "Service", "Deployment",
                                                      "ClusterKopfPeering", "NetworkPolicy"}
    deployment = _live(control_plane, namespace, "deployment", f"{release}-slimserve")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--log-level=info" in args
    checksum = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    # Upgrade: another log level and another node pool.
    second = values_file({**peering, "operator": {**peering["operator"], "logLevel": "debug"},
                          "nodePools": {"arm": {"nodeSelector": {"kubernetes.io/arch": "arm64"}}}}, tmp_path)
    out = control_plane.helm("upgrade", release, str(CHART), "--namespace", namespace, "--values", str(second))
    assert "REVISION: 2" in out.stdout
    deployment = _live(control_plane, namespace, "deployment", f"{release}-slimserve")
    assert "--log-level=debug" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != checksum
    config = yaml.safe_load(_live(control_plane, namespace, "configmap", f"{release}-slimserve")["data"]["operator.yaml"])
    assert config["nodePools"]["arm"] == {"nodeSelector": {"kubernetes.io/arch": "arm64"}}

    # Uninstall: the release's objects go, the CRDs (and with them every user's resources) stay.
    control_plane.helm("uninstall", release, "--namespace", namespace, "--wait")
    gone = control_plane.kubectl("get", "clusterrole", f"{release}-slimserve", "--ignore-not-found", "-o", "name")
    assert gone.stdout.strip() == ""
    left = control_plane.kubectl("get", "-n", namespace, "deployment,configmap,serviceaccount,service",
                                 "-l", f"app.kubernetes.io/instance={release}", "-o", "name")
    assert left.stdout.strip() == ""
    assert control_plane.kubectl("get", "crd", "compressionjobs.slimserve.io", "-o", "name").stdout.strip()


def test_install_with_bad_values_fails_with_the_field(control_plane, chart_crds, namespace, tmp_path):
    bad = values_file({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, tmp_path)
    out = control_plane.helm("install", "bad", str(CHART), "--namespace", namespace, "--values", str(bad),
                             check=False)
    assert out.returncode != 0
    assert "watchNamespaces" in out.stderr and "Not_A_Namespace" in out.stderr
    assert control_plane.helm("list", "--namespace", namespace, "-q").stdout.strip() == ""
