"""Model families SlimServe knows how to build, compress, save and serve.

`load_servable(uri)` is what the inference server calls: a `builtin://` demo model (fp32) or a verified
SlimServe artifact, rebuilt (quantized modules restored and optimized for inference) and warmed up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimserve.models.servable import ModelInfo, Servable, TensorSpec

if TYPE_CHECKING:
    from slimserve.api.storage import S3Spec

__all__ = ["ModelInfo", "Servable", "TensorSpec", "load_servable"]


def load_servable(uri: str, *, s3: "S3Spec | None" = None, expected_digest: str | None = None) -> Servable:
    """A ready-to-serve model from `builtin://NAME` or an artifact URI (file://, pvc://, s3://).

    Artifacts are verified (every file's sha256; `expected_digest` pins the manifest digest); quantized
    ones are rebuilt with their recipe and optimized once here, so the first request pays no compile.
    """
    from slimserve.artifacts import load_artifact
    from slimserve.models.families import eager_forward
    from slimserve.models.loading import BUILTIN_SCHEME, load_builtin, rebuild_artifact

    if uri.startswith(BUILTIN_SCHEME):
        loaded = load_builtin(uri)
        info = loaded.family.info(loaded.recipe, name=loaded.name, version="builtin")
        return loaded.family.servable(eager_forward(loaded.model), info, loaded.assets)

    artifact = load_artifact(uri, s3=s3, expected_digest=expected_digest)
    loaded = rebuild_artifact(artifact)
    info = loaded.family.info(
        artifact.manifest.recipe, name=loaded.name, version=artifact.digest.removeprefix("sha256:")[:12], digest=artifact.digest
    )
    if loaded.quantization is not None:
        from slimserve.quant import optimize_for_inference

        forward = optimize_for_inference(loaded.model, loaded.family.example_inputs(loaded.assets))
    else:
        forward = eager_forward(loaded.model)
    servable = loaded.family.servable(forward, info, loaded.assets)
    servable.warmup()
    return servable
