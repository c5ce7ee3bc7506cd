"""A ModelService reading its model from hf:// with a shared download cache, on the real control plane: the
replicas mount the cache claim and find it in SLIMSERVE_DOWNLOAD_CACHE, and get the Hub token by reference."""

from __future__ import annotations

import pytest

from slimserve.controller.builders.model_service import MODEL_CACHE_MOUNT
from tests.cluster.helpers import apply, exists, get, wait_for
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
