"""The spec models: the invalid corpus is rejected naming the field, examples are valid, CRDs are fresh."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from slimserve.api import CompressionJobSpec, ModelServiceSpec
from slimserve.api import crd as crd_module
from slimserve.api.common import QUANTITY_PATTERN
from slimserve.api.manifests import ManifestError, load_manifests, parse_manifest

REPO = Path(__file__).resolve().parents[1]
INVALID = sorted((REPO / "tests/data/invalid").glob("*.yaml"))
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def expected_field(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect-field: "), f"{path.name} lacks its expect-field header"
    return first.removeprefix("# expect-field: ").strip()


def test_corpus_is_large_enough():
    assert len(INVALID) >= 30


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_manifest_rejected_naming_the_field(path: Path):
    doc = yaml.safe_load(path.read_text())
    with pytest.raises(ManifestError) as caught:
        parse_manifest(doc, path.name)
    assert any(expected_field(path) in line for line in caught.value.errors), caught.value.errors


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_are_valid(path: Path):
    resources = load_manifests(path)
    assert resources and all(r.metadata["name"] for r in resources)


def test_defaults_are_filled_in():
    spec = CompressionJobSpec.model_validate(
        {"model": {"uri": "builtin://digits-cnn"}, "steps": [{"prune": {"amount": 0.3}}], "output": {"uri": "file:///x"}}
    )
    assert spec.node_pool == "cpu"
    assert spec.evaluation.max_drop == 0.01
    assert spec.steps[0].config.method == "structured"
    service = ModelServiceSpec.model_validate({"model": {"uri": "file:///x"}})
    assert service.batching.max_batch_size == 32 and service.autoscaling is None


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_specs_round_trip_through_json(path: Path):
    for resource in load_manifests(path):
        spec = resource.spec
        assert type(spec).from_json(spec.to_json()) == spec


def test_committed_crds_match_the_models():
    assert crd_module.main(["--check", str(REPO / "crds")]) == 0


def test_stale_crd_is_detected(tmp_path: Path, monkeypatch):
    crd_module.main([str(tmp_path)])
    assert crd_module.main(["--check", str(tmp_path)]) == 0
    # A model field changing without regenerating: the check must fail.
    original = crd_module.compression_job_crd

    def with_new_field():
        crd = original()
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        spec["properties"]["priority"] = {"type": "integer", "description": "new field"}
        return crd

    monkeypatch.setattr(crd_module, "compression_job_crd", with_new_field)
    assert crd_module.main(["--check", str(tmp_path)]) == 1


def _walk_properties(schema: dict, path: str = ""):
    for name, prop in (schema.get("properties") or {}).items():
        yield f"{path}.{name}", prop
        yield from _walk_properties(prop, f"{path}.{name}")
    if "items" in schema:
        yield from _walk_properties(schema["items"], f"{path}[]")


@pytest.mark.parametrize("crd", crd_module.all_crds(), ids=lambda c: c["metadata"]["name"])
def test_every_spec_field_is_described(crd):
    version = crd["spec"]["versions"][0]
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    undocumented = [path for path, prop in _walk_properties(spec_schema) if not prop.get("description")]
    assert not undocumented
    assert crd["spec"]["names"]["shortNames"] and crd["spec"]["names"]["categories"] == ["slimserve"]
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Age"}
    scale = {"scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                       "labelSelectorPath": ".status.selector"}} if crd["spec"]["names"]["kind"] == "ModelService" else {}
    assert version["subresources"] == {"status": {}, **scale}


# ---- quantities -----------------------------------------------------------------------------------------

VALID_QUANTITIES = [4, 0, "500m", "2", "2Gi", "1.5", ".5", "+1", "1e3", "1E-3", "128974848", "129e6", "123Mi", "8k"]
INVALID_QUANTITIES = ["lots", "2 GB", "1KiB", "", "m", "1e", "--1", "1.5.2", "2gi", 1.5]


@pytest.mark.parametrize("value", VALID_QUANTITIES)
def test_kubernetes_quantities_are_accepted_as_given(value):
    spec = ModelServiceSpec.model_validate({"model": {"uri": "file:///x"}, "resources": {"limits": {"cpu": value}}})
    assert spec.to_json()["resources"] == {"limits": {"cpu": value}}


@pytest.mark.parametrize("value", INVALID_QUANTITIES)
def test_anything_else_is_refused_naming_field_and_value(value):
    doc = {"model": {"uri": "builtin://digits-cnn"}, "steps": [{"prune": {"amount": 0.5}}], "output": {"uri": "s3://a/b"}}
    with pytest.raises(ValidationError) as caught:
        CompressionJobSpec.model_validate({**doc, "resources": {"requests": {"memory": value}}})
    (error,) = caught.value.errors()
    assert error["loc"] == ("resources", "requests", "memory")
    assert f"{value!r} is not a Kubernetes quantity" in error["msg"]


def test_crds_check_quantities_with_the_models_pattern():
    for crd in crd_module.all_crds():
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        for field in ("requests", "limits"):
            quantity = spec["properties"]["resources"]["properties"][field]["additionalProperties"]
            assert quantity == {"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}
