"""Generate the CustomResourceDefinitions from the spec models.

`python -m slimserve.api.crd [--check] [DIR]` writes (or checks) `DIR/<plural>.slimserve.io.yaml`.
The pydantic models are the source of truth; this module only translates their JSON Schema into the
structural OpenAPI v3 subset that Kubernetes accepts.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from slimserve.api.batch_inference import BatchInference, BatchInferenceSpec, BatchInferenceStatus
from slimserve.api.common import GROUP, VERSION
from slimserve.api.compression_job import CompressionJob, CompressionJobSpec, CompressionJobStatus
from slimserve.api.model_service import ModelService, ModelServiceSpec, ModelServiceStatus

CATEGORY = "slimserve"
_DROPPED_KEYS = {"title", "additionalProperties"}


def structural_schema(model: type, *, mode: str = "validation") -> dict[str, Any]:
    """The model's JSON Schema, inlined and rewritten to Kubernetes' structural OpenAPI v3."""
    raw = model.model_json_schema(by_alias=True, mode=mode)
    defs = raw.pop("$defs", {})
    return _rewrite(raw, defs)


def _rewrite(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_rewrite(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    while "$ref" in node or "anyOf" in node:
        if "anyOf" in node:
            node = _collapse_any_of(node)
        else:  # inline the definition; the field's own keys (description, default) win
            target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
            node = {**target, **node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS and not (key == "additionalProperties" and isinstance(value, dict)):
            continue
        if key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out[key] = {name: _rewrite(prop, defs) for name, prop in value.items()}
        else:
            out[key] = _rewrite(value, defs)
    if out.get("default", 0) is None:
        del out["default"]
    if "properties" in out:
        out.setdefault("type", "object")
    return out


def _collapse_any_of(node: dict[str, Any]) -> dict[str, Any]:
    options = [opt for opt in node.pop("anyOf") if opt.get("type") != "null"]
    types = sorted(opt.get("type", "") for opt in options)
    if len(options) == 1:
        return {**options[0], **node}
    if types == ["integer", "string"]:  # a Kubernetes quantity; a string's pattern constrains the string form
        (string,) = [opt for opt in options if opt.get("type") == "string"]
        return {"x-kubernetes-int-or-string": True, **{k: v for k, v in string.items() if k != "type"}, **node}
    raise ValueError(f"no structural form for anyOf {options}")


def _status_schema(model: type) -> dict[str, Any]:
    schema = structural_schema(model, mode="serialization")
    conditions = schema["properties"].get("conditions")
    if conditions is not None:  # one entry per type, merged by server-side apply
        conditions["x-kubernetes-list-type"] = "map"
        conditions["x-kubernetes-list-map-keys"] = ["type"]
    schema.pop("required", None)
    return schema


# A printer column's row: (name, type, jsonPath, description[, priority]); priority 1 shows it only with
# `kubectl get -o wide`.
Column = tuple[Any, ...]
_PHASE: Column = ("Phase", "string", ".status.phase", "Lifecycle phase.")


def _condition(condition: str, description: str) -> Column:
    return (condition, "string", f'.status.conditions[?(@.type=="{condition}")].status', description)


def printer_columns(*rows: Column) -> list[dict[str, Any]]:
    """A kind's `additionalPrinterColumns`: its rows, then its age."""
    columns = []
    for name, type_, json_path, description, *priority in rows:
        column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": json_path}
        if priority:
            column["priority"] = priority[0]
        columns.append({**column, "description": description})
    return [*columns, {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]


def build_crd(resource: type, spec: type, status: type, columns: list[dict[str, Any]]) -> dict[str, Any]:
    spec_schema = structural_schema(spec)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{resource.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "slimserve", "app.kubernetes.io/part-of": "slimserve"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}, **({"scale": dict(resource.scale)} if resource.scale else {})},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": resource.description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "slimserve.io/v1alpha1"},
                                "kind": {"type": "string", "description": resource.kind},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": _status_schema(status),
                            },
                        }
                    },
                }
            ],
        },
    }


def compression_job_crd() -> dict[str, Any]:
    columns = printer_columns(
        _PHASE,
        _condition("Succeeded", "True once the artifact is written within the accuracy budget."),
        ("Size-Ratio", "number", ".status.metrics.sizeRatio", "Baseline size over compressed size."),
        ("Speedup", "number", ".status.metrics.speedup", "Compressed throughput over baseline throughput."),
        ("Acc-Delta", "number", ".status.metrics.accuracyDelta", "Change of the task metric (negative is a drop)."),
    )
    return build_crd(CompressionJob, CompressionJobSpec, CompressionJobStatus, columns)


def model_service_crd() -> dict[str, Any]:
    columns = printer_columns(
        _condition("Ready", "True when the current generation is rolled out and available."),
        ("Replicas", "integer", ".status.readyReplicas", "Ready pods."),
        ("URL", "string", ".status.url", "In-cluster REST URL."),
        ("Canary", "integer", ".status.canary.trafficPercent", "Share of the traffic the candidate model gets now."),
        ("Digest", "string", ".status.modelDigest", "Digest of the served artifact.", 1),
    )
    return build_crd(ModelService, ModelServiceSpec, ModelServiceStatus, columns)


def batch_inference_crd() -> dict[str, Any]:
    columns = printer_columns(
        _PHASE,
        _condition("Succeeded", "True once every shard's part and the manifest are written."),
        ("Progress", "string", ".status.progress", "Records scored of the total, e.g. 1200/5000."),
        ("Records/s", "number", ".status.recordsPerSecond", "Records scored per second since the start."),
        ("Shards", "integer", ".status.shards.total", "Shards of this generation.", 1),
    )
    return build_crd(BatchInference, BatchInferenceSpec, BatchInferenceStatus, columns)


def all_crds() -> list[dict[str, Any]]:
    return [compression_job_crd(), model_service_crd(), batch_inference_crd()]


def render(crd: dict[str, Any]) -> str:
    header = "# Generated from slimserve.api by `python -m slimserve.api.crd`; do not edit by hand.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=120)


def crd_path(directory: Path, crd: dict[str, Any]) -> Path:
    return directory / f"{crd['metadata']['name']}.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", default="crds", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed CRD differs from the models")
    args = parser.parse_args(argv)
    stale = []
    for crd in all_crds():
        path = crd_path(args.directory, crd)
        text = render(crd)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("stale CRDs (run `python -m slimserve.api.crd`):", *stale, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
