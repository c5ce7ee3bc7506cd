"""Models read from hf:// on the real control plane: a ModelService's replicas mount the shared download cache
(its own, or its node pool's) and find it in SLIMSERVE_DOWNLOAD_CACHE; its pods and a CompressionJob's pod get the
Hub token by reference."""

from __future__ import annotations

import json

import pytest
import yaml

from slimserve.controller.builders.model_service import MODEL_CACHE_MOUNT
from slimserve.controller.model_service_status import MODEL_CACHE_CLAIM_MISSING
from tests.cluster.helpers import SOLO_NAMESPACE_PREFIX, apply, condition, exists, get, wait_for, wait_for_event
from tests.helm.chart import operator_config, render
from tests.operator.test_compression_job_cluster import compression_job, pods_of_job, running
from tests.operator.test_model_service_cluster import model_service

pytestmark = pytest.mark.cluster


def test_replicas_share_the_model_cache_and_read_the_token_from_its_secret(control_plane, operator, namespace):
    service = model_service(
        "from-hub", replicas=2, modelCache={"claimName": "model-cache"},
        model={"uri": "hf://acme/classifier@v1", "hfTokenSecret": {"name": "hub-token"}},
    )
    apply(control_plane, namespace, claim("model-cache"), service)
    deployment = wait_for("the Deployment", lambda: exists(control_plane, namespace, "deployment", "from-hub")
                          and get(control_plane, namespace, "deployment", "from-hub"))
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "model-cache"}} in pod["volumes"]
    (container,) = pod["containers"]
    assert {"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT} in container["volumeMounts"]
    env = {entry["name"]: entry for entry in container["env"]}
    assert env["SLIMSERVE_DOWNLOAD_CACHE"]["value"] == MODEL_CACHE_MOUNT
    assert env["SLIMSERVE_ARTIFACT"]["value"] == "hf://acme/classifier@v1"
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub-token", "key": "HF_TOKEN"}}}


def test_a_compression_job_pod_reads_the_hub_token_from_its_secret(control_plane, operator, namespace):
    token = "hf_never_in_a_template"
    apply(control_plane, namespace, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hub-token"},
                                     "stringData": {"HF_TOKEN": token}})
    job = compression_job("from-hub", outcome="run", model="hf://acme/classifier@v1")
    job["spec"]["model"]["hfTokenSecret"] = {"name": "hub-token"}
    running(control_plane, namespace, job)
    (pod,) = pods_of_job(control_plane, namespace, "from-hub-g1")
    (container,) = pod["spec"]["containers"]
    env = {entry["name"]: entry for entry in container["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub-token", "key": "HF_TOKEN"}}}
    assert token not in json.dumps(pod) and token not in json.dumps(get(control_plane, namespace, "job", "from-hub-g1"))


def claim(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}


def cache_volume(cp, namespace: str, name: str) -> dict | None:
    pod = get(cp, namespace, "deployment", name)["spec"]["template"]["spec"]
    return next((volume for volume in pod["volumes"] if volume["name"] == "model-cache"), None)


def test_a_node_pools_model_cache_is_mounted_once_its_claim_exists_and_a_services_own_wins(
    control_plane, operator_factory, tmp_path
):
    cp = control_plane
    namespace = cp.create_namespace(f"{SOLO_NAMESPACE_PREFIX}pool-cache")  # only this operator acts here
    try:
        values = {"nodePools": {"cpu": {"nodeSelector": {"slimserve.io/pool": "cpu"},
                                        "modelCache": {"claimName": "pool-cache"}}}}
        config = tmp_path / "operator.yaml"
        config.write_text(yaml.safe_dump(operator_config(render(values))))  # the ConfigMap the chart renders
        operator_factory(extra_args=("--namespace", namespace, f"--config={config}"))

        # The pool's claim is not in this namespace: refused, said so, and no pods left Pending on it.
        apply(cp, namespace, model_service("pooled", model={"uri": "hf://acme/classifier@v1"}))
        message = wait_for_event(cp, namespace, "pooled", reason=MODEL_CACHE_CLAIM_MISSING, kind="ModelService")
        assert "PersistentVolumeClaim 'pool-cache' does not exist" in message and "node pool 'cpu'" in message
        ready = condition(get(cp, namespace, "modelservice", "pooled")["status"], "Ready")
        assert (ready["status"], ready["reason"]) == ("False", MODEL_CACHE_CLAIM_MISSING)
        assert not exists(cp, namespace, "deployment", "pooled")

        # The claim appears: the next retry rolls the pods with it.
        apply(cp, namespace, claim("pool-cache"), claim("own-cache"))
        volume = wait_for("the pool's cache mounted", lambda: exists(cp, namespace, "deployment", "pooled")
                          and cache_volume(cp, namespace, "pooled"))
        assert volume == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "pool-cache"}}
        (container,) = get(cp, namespace, "deployment", "pooled")["spec"]["template"]["spec"]["containers"]
        assert {"name": "SLIMSERVE_DOWNLOAD_CACHE", "value": MODEL_CACHE_MOUNT} in container["env"]

        # A service's own spec.modelCache wins over its pool's.
        apply(cp, namespace, model_service("own", modelCache={"claimName": "own-cache"}))
        volume = wait_for("the service's cache mounted", lambda: exists(cp, namespace, "deployment", "own")
                          and cache_volume(cp, namespace, "own"))
        assert volume == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "own-cache"}}
    finally:
        cp.delete_namespace(namespace, wait=False)
