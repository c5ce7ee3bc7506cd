"""Reading SlimServe manifests outside a cluster, with errors that name the field as the API server does."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from slimserve.api.common import API_VERSION
from slimserve.api.compression_job import CompressionJob
from slimserve.api.model_service import ModelService

Resource = CompressionJob | ModelService
KINDS: dict[str, type[Resource]] = {"CompressionJob": CompressionJob, "ModelService": ModelService}


class ManifestError(ValueError):
    """An invalid manifest; `errors` holds one `field.path: message` line per problem."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))


def field_path(loc: Iterable[Any]) -> str:
    """('spec', 'steps', 0, 'prune', 'amount') -> 'spec.steps[0].prune.amount'."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _errors_of(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors():
        # Union members add their class name to the location; it is not a field.
        loc = [p for p in error["loc"] if not (isinstance(p, str) and p[:1].isupper())]
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"{field_path(loc)}: {message}")
    return lines


def parse_manifest(doc: Any, source: str = "manifest") -> Resource:
    if not isinstance(doc, dict):
        raise ManifestError(source, ["expected a mapping with apiVersion, kind, metadata and spec"])
    kind = doc.get("kind")
    if doc.get("apiVersion") != API_VERSION or kind not in KINDS:
        raise ManifestError(
            source, [f"apiVersion/kind: expected {API_VERSION} CompressionJob or ModelService, got {doc.get('apiVersion')} {kind}"]
        )
    if not (doc.get("metadata") or {}).get("name"):
        raise ManifestError(source, ["metadata.name: required"])
    try:
        return KINDS[kind].model_validate(doc)
    except ValidationError as exc:
        raise ManifestError(f"{source} ({kind} {doc['metadata']['name']})", _errors_of(exc)) from None


def load_manifests(path: str | Path) -> list[Resource]:
    """Every SlimServe resource in a (multi-document) YAML file; other kinds are an error."""
    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except FileNotFoundError:
        raise ManifestError(str(path), ["file not found"]) from None
    except yaml.YAMLError as exc:
        raise ManifestError(str(path), [f"not valid YAML: {exc}"]) from None
    if not docs:
        raise ManifestError(str(path), ["no manifest in the file"])
    return [parse_manifest(doc, f"{path}#{index}") for index, doc in enumerate(docs)]
