"""What `slimserve run` does for a manifest file: which jobs to run, which datasets to score, which model to serve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slimserve.api.batch_inference import BatchInference, BatchInferenceSpec
from slimserve.api.compression_job import CompressionJob
from slimserve.api.manifests import load_manifests
from slimserve.api.model_service import ModelService
from slimserve.batch.manifests import with_model_uri


class PlanError(ValueError):
    """The file's resources do not make a runnable whole (one line, naming the resource)."""


@dataclass(frozen=True)
class LocalPlan:
    jobs: list[CompressionJob]  # run in file order
    batches: list[tuple[str, BatchInferenceSpec]]  # (name, spec with the model's URI), run after the jobs
    service: ModelService | None
    serve_uri: str | None  # the artifact (or builtin model) the service serves

    @property
    def model_name(self) -> str | None:
        if self.service is None:
            return None
        return self.service.spec.model_name or self.service.metadata["name"]


def plan_from_file(path: str | Path) -> LocalPlan:
    """Read the manifests (ManifestError for invalid ones) and pair the service and the batches with their jobs."""
    resources = load_manifests(path)
    jobs = [r for r in resources if isinstance(r, CompressionJob)]
    batches = [(r.metadata["name"], with_model_uri(r, jobs, str(path))) for r in resources if isinstance(r, BatchInference)]
    services = [r for r in resources if isinstance(r, ModelService)]
    if len(services) > 1:
        names = ", ".join(s.metadata["name"] for s in services)
        raise PlanError(f"{path}: one ModelService can be served locally, found {len(services)} ({names})")
    service = services[0] if services else None
    serve_uri = None
    if service is not None:
        refuse_cluster_only_fields(service)
        ref = service.spec.model.compression_job_ref
        if ref is None:
            serve_uri = service.spec.model.uri
        else:
            job = next((j for j in jobs if j.metadata["name"] == ref.name), None)
            if job is None:
                raise PlanError(
                    f"ModelService {service.metadata['name']}: spec.model.compressionJobRef names "
                    f"CompressionJob {ref.name!r}, which is not in {path}"
                )
            serve_uri = job.spec.output.uri
    if not jobs and not batches and service is None:
        raise PlanError(f"{path}: no CompressionJob, BatchInference or ModelService to run")
    return LocalPlan(jobs=jobs, batches=batches, service=service, serve_uri=serve_uri)


# What a ModelService asks for that only a cluster can give: Secrets (and, for kubernetes auth, the API server)
# do not exist here, and serving without them would answer in plain text, or to anyone, where the file said not;
# a canary's traffic split is a cluster's Service or Gateway, and serving the stable model alone would drop the
# candidate the file names. Field -> (its path, why it cannot be honoured here, what to try locally instead).
_CLUSTER_ONLY = {
    "tls": ("spec.tls", "its Secret exists only in a cluster, and the server would not serve without it",
            "slimserve serve --tls-dir DIR"),
    "auth": ("spec.auth", "its Secret or API server exists only in a cluster, and the server would not serve "
             "without it", "slimserve serve --auth-mode apiKeys --auth-api-keys-dir DIR"),
    "canary": ("spec.canary", "splitting traffic between two models takes a cluster's Service or Gateway",
               "slimserve serve URI for the candidate"),
}


def refuse_cluster_only_fields(service: ModelService) -> None:
    """PlanError naming the first field set that `slimserve run` cannot honour, rather than serving without it."""
    for attribute, (field, why, instead) in _CLUSTER_ONLY.items():
        if getattr(service.spec, attribute) is not None:
            raise PlanError(
                f"ModelService {service.metadata['name']}: {field} is not served by slimserve run ({why}): "
                f"remove it from the file to run locally, or try it with `{instead}`"
            )
