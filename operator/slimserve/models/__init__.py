"""Model families SlimServe knows how to build, compress, save and serve.

`load_servable(uri)` is what the inference server calls: a `builtin://` demo model (fp32) or a verified
SlimServe artifact, rebuilt (quantized modules restored and optimized for inference) and warmed up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimserve.models.servable import ModelInfo, Servable, TensorSpec

if TYPE_CHECKING:
    from slimserve.api.storage import S3Spec

__all__ = ["ModelInfo", "Servable", "TensorSpec", "load_servable", "servable_artifact"]


def servable_artifact(
    uri: str, *, s3: "S3Spec | None" = None, expected_digest: str | None = None, allow_outside_budget: bool = False,
):
    """The verified artifact at `uri` (`expected_digest` pins its manifest digest), refused (ArtifactError,
    reason OutsideBudget) when its compression missed the accuracy budget unless `allow_outside_budget`."""
    from slimserve.artifacts import ArtifactError, load_artifact

    artifact = load_artifact(uri, s3=s3, expected_digest=expected_digest)
    if not artifact.manifest.within_budget and not allow_outside_budget:
        raise ArtifactError(
            f"{uri}: its compression missed the accuracy budget (withinBudget: false in manifest.json); it is "
            "served only when allowed (--allow-outside-budget, a ModelService's spec.model.allowOutsideBudget)",
            reason="OutsideBudget",
        )
    return artifact


def load_servable(
    uri: str, *, s3: "S3Spec | None" = None, expected_digest: str | None = None, device: str = "cpu",
    cuda_graphs: bool = False, allow_outside_budget: bool = False,
) -> Servable:
    """A ready-to-serve model from `builtin://NAME` or an artifact URI (file://, pvc://, s3://).

    Artifacts are verified (every file's sha256; `expected_digest` pins the manifest digest); quantized
    ones are rebuilt with their recipe and optimized once here, so the first request pays no compile.
    `device` is a policy name (`slimserve.models.device`): the weights move there once, each call's inputs
    are copied in and its outputs out; `cuda_graphs` replays recorded CUDA graphs on a GPU. An artifact whose
    compression missed its accuracy budget is refused (ArtifactError, reason OutsideBudget) unless
    `allow_outside_budget`.
    """
    from dataclasses import replace

    from slimserve.models.device import on_device, precision, resolve_device, to_device
    from slimserve.models.families import eager_forward
    from slimserve.models.loading import BUILTIN_SCHEME, load_builtin, rebuild_artifact

    target = resolve_device(device)
    if uri.startswith(BUILTIN_SCHEME):
        loaded = load_builtin(uri)
        info = loaded.family.info(loaded.recipe, name=loaded.name, version="builtin")
    else:
        artifact = servable_artifact(uri, s3=s3, expected_digest=expected_digest, allow_outside_budget=allow_outside_budget)
        loaded = rebuild_artifact(artifact)
        info = loaded.family.info(
            artifact.manifest.recipe, name=loaded.name, version=artifact.digest.removeprefix("sha256:")[:12],
            digest=artifact.digest,
        )
    model = loaded.model.to(target)
    if loaded.quantization is not None:
        from slimserve.quant import optimize_for_inference

        forward = optimize_for_inference(model, to_device(loaded.family.example_inputs(loaded.assets), target))
    else:
        forward = eager_forward(model)
    # What it computes in, known once compiled: a half model is cast up where the device lacks that half.
    compute_dtype = getattr(forward, "compute_dtype", None)
    computes_in = loaded.family.precision(model) or precision(model, loaded.quantization, compute_dtype)
    info = replace(info, device=str(target), precision=computes_in)
    if cuda_graphs and target.type == "cuda":
        from slimserve.models.cuda_graphs import CudaGraphForward

        forward = CudaGraphForward(forward, target)
    servable = loaded.family.servable(on_device(forward, target), info, loaded.assets)
    if not uri.startswith(BUILTIN_SCHEME):
        servable.warmup()
    return servable
