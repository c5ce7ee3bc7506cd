"""Reading SlimServe manifests outside a cluster: YAML or JSON documents, one resource picked by kind and
name, and errors that name the field as the API server does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from slimserve.api.batch_inference import BatchInference
from slimserve.api.common import API_VERSION
from slimserve.api.compression_job import CompressionJob
from slimserve.api.field_errors import field_errors
from slimserve.api.model_service import ModelService

Resource = CompressionJob | ModelService | BatchInference
KINDS: dict[str, type[Resource]] = {
    "CompressionJob": CompressionJob, "ModelService": ModelService, "BatchInference": BatchInference,
}


class ManifestError(ValueError):
    """An invalid manifest; `errors` holds one `field.path: message` line per problem."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))


def read_documents(text: str, source: str) -> list[Any]:
    """The documents of a (multi-document) YAML text, empty ones left out; JSON is YAML too."""
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(source, [f"not valid YAML or JSON: {' '.join(str(exc).split())}"]) from None


def load_documents(path: str | Path) -> list[Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(str(path), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(str(path), [f"cannot read: {exc.strerror if isinstance(exc, OSError) else exc}"]) from None
    return read_documents(text, str(path))


def is_manifest(doc: Any) -> bool:
    """A resource (kind or apiVersion beside its spec) rather than a bare spec."""
    return isinstance(doc, dict) and "spec" in doc and ("kind" in doc or "apiVersion" in doc)


def pick_manifest(documents: list[Any], kind: str, source: str, name: str | None = None, name_option: str = "name") -> dict:
    """The one manifest of `kind` among `documents` (the one named `name` when given; a document without a
    kind counts as `kind`). `name_option` is how the caller lets a user choose, for the messages."""
    if not documents:
        raise ManifestError(source, [f"empty; expected a {kind} manifest"])
    for doc in documents:
        if not isinstance(doc, dict):
            raise ManifestError(source, [f"expected a {kind} manifest (a mapping), got {type(doc).__name__}"])
    manifests = [doc for doc in documents if is_manifest(doc)]
    candidates = [doc for doc in manifests if doc.get("kind", kind) == kind]
    names = [str((doc.get("metadata") or {}).get("name", "")) for doc in candidates]
    if not candidates:
        found = ", ".join(sorted({str(doc.get("kind")) for doc in manifests})) or "no manifest"
        raise ManifestError(source, [f"no {kind} in the file (found: {found})"])
    if name is not None:
        chosen = [doc for doc, doc_name in zip(candidates, names) if doc_name == name]
        if len(chosen) != 1:
            problem = f"{len(chosen)} {kind}s of that name" if chosen else f"no {kind} of that name (found: {', '.join(names)})"
            raise ManifestError(source, [f"{name_option} {name}: {problem}"])
        return chosen[0]
    if len(candidates) > 1:
        raise ManifestError(source, [f"{len(candidates)} {kind}s ({', '.join(names)}); choose one with {name_option}"])
    return candidates[0]


def parse_manifest(doc: Any, source: str = "manifest") -> Resource:
    if not isinstance(doc, dict):
        raise ManifestError(source, ["expected a mapping with apiVersion, kind, metadata and spec"])
    kind = doc.get("kind")
    if doc.get("apiVersion") != API_VERSION or kind not in KINDS:
        raise ManifestError(
            source, [f"apiVersion/kind: expected {API_VERSION} {', '.join(KINDS)}, got {doc.get('apiVersion')} {kind}"]
        )
    if not (doc.get("metadata") or {}).get("name"):
        raise ManifestError(source, ["metadata.name: required"])
    try:
        return KINDS[kind].model_validate(doc)
    except ValidationError as exc:
        raise ManifestError(f"{source} ({kind} {doc['metadata']['name']})", field_errors(exc)) from None


def load_manifests(path: str | Path) -> list[Resource]:
    """Every SlimServe resource in a (multi-document) YAML file; other kinds are an error."""
    docs = load_documents(path)
    if not docs:
        raise ManifestError(str(path), ["no manifest in the file"])
    return [parse_manifest(doc, f"{path}#{index}") for index, doc in enumerate(docs)]
