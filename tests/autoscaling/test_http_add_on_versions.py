"""The HTTPScaledObject the operator builds says the same to every supported KEDA HTTP add-on version: each field it
sets is one that version's CRD declares (the API server prunes any other without a word) with the type declared,
and it sets every field that version requires. The CRDs are the add-on's own, vendored in tests/operator/data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from slimserve.controller.builders import model_service as b
from tests.operator.test_builders_model_service import CONFIG, MODEL, OWNER, by_kind, spec

DATA = Path(__file__).resolve().parents[1] / "operator" / "data"
SUPPORTED = {
    "v0.8.0": DATA / "keda-http-httpscaledobjects-crd-v0.8.0.yaml",
    "v0.15.0": DATA / "keda-http-httpscaledobjects-crd.yaml",
}
TYPES = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool}


def schema_of(crd_file: Path) -> dict[str, Any]:
    crd = next(doc for doc in yaml.safe_load_all(crd_file.read_text()) if doc)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


def undeclared(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """What of `value` the schema would prune or refuse: fields it does not declare, wrong types, missing required."""
    expected = schema.get("type")
    if expected and not isinstance(value, TYPES[expected]) or isinstance(value, bool) and expected == "integer":
        return [f"{path or '.'}: {type(value).__name__}, declared {expected}"]
    problems = []
    if isinstance(value, dict) and "properties" in schema:
        problems += [f"{path}.{name}: required" for name in schema.get("required", []) if name not in value]
        for name, item in value.items():
            if name not in schema["properties"]:
                problems.append(f"{path}.{name}: not declared")
            else:
                problems += undeclared(item, schema["properties"][name], f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        problems += [p for i, item in enumerate(value) for p in undeclared(item, schema["items"], f"{path}[{i}]")]
    return problems


def test_the_check_finds_what_an_api_server_would_prune():
    schema = schema_of(SUPPORTED["v0.8.0"])
    built = {"spec": {"hosts": ["a"], "scaleTargetRef": {"service": "s", "port": "8080"},
                      "timeouts": {"conditionWait": "180s"}}}
    assert sorted(undeclared(built, schema)) == [".spec.scaleTargetRef.port: str, declared integer",
                                                 ".spec.timeouts: not declared"]
    assert undeclared({"spec": {"hosts": ["a"]}}, schema) == [".spec.scaleTargetRef: required"]


@pytest.mark.parametrize("version", sorted(SUPPORTED))
def test_the_http_scaled_object_uses_only_what_each_supported_version_declares(version):
    autoscaling = {"metric": "concurrency", "minReplicas": 0, "maxReplicas": 5, "target": 4}
    children = b.desired_children(OWNER, spec(autoscaling=autoscaling), MODEL, CONFIG.node_pool("cpu"), CONFIG,
                                  keda_installed=True, http_add_on_installed=True)
    built = by_kind(children)["HTTPScaledObject"]
    assert built["spec"]["replicas"] == {"min": 0, "max": 5}  # the object under test is the scale-to-zero one
    assert undeclared({"spec": built["spec"]}, schema_of(SUPPORTED[version])) == []
