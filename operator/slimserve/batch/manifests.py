"""A BatchInference from a file of manifests, its model resolved as the operator resolves it: a
`compressionJobRef` names a CompressionJob of the same file, whose output is the model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from slimserve.api.batch_inference import BatchInference, BatchInferenceSpec
from slimserve.api.compression_job import CompressionJob
from slimserve.api.manifests import ManifestError, load_documents, parse_manifest, pick_manifest


def batch_from_file(path: str | Path, name: str | None = None) -> tuple[str, BatchInferenceSpec]:
    """(name, spec with `model.uri` set) of the file's BatchInference (the one named `name` when given)."""
    documents = load_documents(path)
    chosen = parse_manifest(pick_manifest(documents, "BatchInference", str(path), name, name_option="--name"), str(path))
    jobs = [job for doc in documents if isinstance(doc, dict) and doc.get("kind") == "CompressionJob"
            for job in [parse_manifest(doc, str(path))]]
    return chosen.metadata["name"], with_model_uri(chosen, jobs, str(path))


def with_model_uri(batch: BatchInference, jobs: Sequence[CompressionJob], source: str) -> BatchInferenceSpec:
    """The spec, its `compressionJobRef` replaced by that job's output URI (the artifact it writes)."""
    ref = batch.spec.model.compression_job_ref
    if ref is None:
        return batch.spec
    job = next((job for job in jobs if job.metadata["name"] == ref.name), None)
    if job is None:
        raise ManifestError(source, [
            f"BatchInference {batch.metadata['name']}: spec.model.compressionJobRef names CompressionJob "
            f"{ref.name!r}, which is not in the file"
        ])
    return BatchInferenceSpec.model_validate({**batch.spec.to_json(), "model": {"uri": job.spec.output.uri}})
