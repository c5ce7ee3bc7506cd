"""The CRDs on a real API server: the invalid corpus is refused (schema and CEL) naming the field; the
examples are accepted; `kubectl explain`, short names and printer columns work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slimserve.api import GROUP, VERSION

REPO = Path(__file__).resolve().parents[2]
INVALID = sorted((REPO / "tests/data/invalid").glob("*.yaml"))
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
PLURALS = {"CompressionJob": "compressionjobs", "ModelService": "modelservices", "BatchInference": "batchinferences"}

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def custom_objects(control_plane, crds) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(control_plane.api_client())


def _create_dry_run(api: client.CustomObjectsApi, namespace: str, doc: dict) -> dict:
    return api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[doc["kind"]], doc, dry_run="All", field_validation="Strict"
    )


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_api_server_rejects_invalid_manifest(custom_objects, namespace, path: Path):
    field = path.read_text().splitlines()[0].removeprefix("# expect-field: ").strip()
    doc = yaml.safe_load(path.read_text())
    with pytest.raises(ApiException) as caught:
        _create_dry_run(custom_objects, namespace, doc)
    assert caught.value.status in (400, 422)
    message = json.loads(caught.value.body)["message"]
    assert field in message, message


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_api_server_accepts_examples_and_applies_defaults(custom_objects, namespace, path: Path):
    for doc in yaml.safe_load_all(path.read_text()):
        created = _create_dry_run(custom_objects, namespace, doc)
        if doc["kind"] == "CompressionJob":
            assert created["spec"]["nodePool"] == "cpu" or doc["spec"].get("nodePool")
            assert "maxDrop" in created["spec"]["evaluation"]
        elif doc["kind"] == "BatchInference":
            assert created["spec"]["output"]["format"] in ("jsonl", "parquet")
            assert created["spec"]["batchSize"] >= 1
        else:
            assert created["spec"]["batching"]["enabled"] is True


def test_kubectl_explain_reads_like_docs(control_plane, crds):
    out = control_plane.kubectl("explain", "compressionjob.spec.steps").stdout
    assert "quantize, if present, comes last" in out
    assert "prune" in out and "distill" in out
    out = control_plane.kubectl("explain", "msvc.spec.autoscaling.metric").stdout
    assert "HorizontalPodAutoscaler" in out


def test_short_names_category_and_printer_columns(control_plane, crds, namespace):
    control_plane.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples/quickstart.yaml"))
    cj = control_plane.kubectl("get", "cjob", "-n", namespace).stdout
    for column in ("PHASE", "SUCCEEDED", "SIZE-RATIO", "SPEEDUP", "ACC-DELTA", "AGE"):
        assert column in cj.splitlines()[0]
    msvc = control_plane.kubectl("get", "msvc", "-n", namespace).stdout
    for column in ("READY", "REPLICAS", "URL", "AGE"):
        assert column in msvc.splitlines()[0]
    both = control_plane.kubectl("get", "slimserve", "-n", namespace, "-o", "name").stdout.split()
    assert "compressionjob.slimserve.io/digits-slim" in both and "modelservice.slimserve.io/digits" in both
