"""Models read from hf:// on the real control plane: a ModelService's replicas mount the shared download cache
and find it in SLIMSERVE_DOWNLOAD_CACHE; its pods and a CompressionJob's pod get the Hub token by reference."""

from __future__ import annotations

import json

import pytest

from slimserve.controller.builders.model_service import MODEL_CACHE_MOUNT
from tests.cluster.helpers import apply, exists, get, wait_for
from tests.operator.test_compression_job_cluster import compression_job, pods_of_job, running
from tests.operator.test_model_service_cluster import model_service

pytestmark = pytest.mark.cluster


def test_replicas_share_the_model_cache_and_read_the_token_from_its_secret(control_plane, operator, namespace):
    service = model_service(
        "from-hub", replicas=2, modelCache={"claimName": "model-cache"},
        model={"uri": "hf://acme/classifier@v1", "hfTokenSecret": {"name": "hub-token"}},
    )
    apply(control_plane, namespace, service)
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
