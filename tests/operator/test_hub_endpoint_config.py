"""The operator's hubEndpoint: every pod that may read an hf:// source gets it as HF_ENDPOINT, from the chart's value."""

from __future__ import annotations

import pydantic
import pytest

from slimserve.api import BatchInferenceSpec, CompressionJobSpec
from slimserve.api.model_service import ModelServiceSpec
from slimserve.artifacts.hf_source import hf_endpoint
from slimserve.controller.builders import batch_inference, compression_job
from slimserve.controller.builders import model_service as serving
from slimserve.controller.config import OperatorConfig

from tests.helm.test_chart import operator_config, render

MIRROR = "https://hub-mirror.internal.test"
HUB_URI = {"uri": "hf://acme/classifier@v1", "hfTokenSecret": {"name": "hub-token"}}


def pod_env(manifest: dict) -> dict[str, dict]:
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item for item in container["env"]}


def every_pod_env(config: OperatorConfig) -> dict[str, dict[str, dict]]:
    job = compression_job.build_job(
        name="digits", namespace="ml", generation=1, config=config,
        spec=CompressionJobSpec.from_json({"model": HUB_URI, "output": {"uri": "pvc://models/out"},
                                           "steps": [{"quantize": {"method": "int8-dynamic"}}]}),
    )
    batch = batch_inference.build_job(
        name="embed", namespace="ml", generation=1, config=config, model_uri="hf://acme/classifier@v1",
        model_digest=None,
        spec=BatchInferenceSpec.from_json({"model": {"uri": "hf://acme/classifier@v1"},
                                           "input": {"uri": "pvc://data/x.jsonl"}, "output": {"uri": "pvc://out/"}}),
    )
    service_spec = ModelServiceSpec.from_json({"model": HUB_URI})
    owner = serving.Owner(name="digits", namespace="ml", uid="uid-1")
    children = serving.desired_children(owner, service_spec, serving.ArtifactToServe("hf://acme/classifier@v1", None),
                                        config.node_pool("cpu"), config, keda_installed=False)
    (deployment,) = [m for m in children.apply if m["kind"] == "Deployment"]
    return {"compression": pod_env(job), "batch": pod_env(batch), "server": pod_env(deployment)}


def test_a_configured_mirror_reaches_every_pod_and_the_token_stays_a_reference():
    for kind, env in every_pod_env(OperatorConfig(hub_endpoint=MIRROR)).items():
        assert env["HF_ENDPOINT"] == {"name": "HF_ENDPOINT", "value": MIRROR}, kind
        if kind != "batch":  # a BatchInference names no token Secret
            assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hub-token", "key": "HF_TOKEN"}}, kind


def test_without_a_mirror_no_pod_gets_hf_endpoint():
    assert all("HF_ENDPOINT" not in env for env in every_pod_env(OperatorConfig()).values())


def test_the_pods_reader_takes_the_variable(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", MIRROR)
    assert hf_endpoint() == MIRROR
    monkeypatch.setenv("HF_ENDPOINT", "")
    assert hf_endpoint() is None


def test_the_chart_value_becomes_the_configuration():
    assert OperatorConfig.model_validate(operator_config(render({}))).hub_endpoint is None
    objects = render({"workloads": {"hubEndpoint": MIRROR}})
    assert OperatorConfig.model_validate(operator_config(objects)).hub_endpoint == MIRROR


@pytest.mark.parametrize("endpoint", ["hub-mirror:443", "ftp://hub.test", "https://"])
def test_an_endpoint_that_is_no_http_url_is_refused(endpoint):
    with pytest.raises(pydantic.ValidationError, match="hub_endpoint|hubEndpoint"):
        OperatorConfig.model_validate({"hubEndpoint": endpoint})
