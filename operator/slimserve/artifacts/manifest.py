"""The artifact manifest (`manifest.json`): what the model is, how to rebuild it, and a digest of every file."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

FORMAT_VERSION = "slimserve/v1"
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "weights.safetensors"


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Manifest(BaseModel):
    """Everything needed to rebuild and trust the model; newer writers may add fields, readers ignore them."""

    model_config = ConfigDict(extra="allow")

    format: str = Field(description="Always slimserve/v1 for this reader.")
    family: str = Field(description="Model family, e.g. digits-cnn, minilm: picks the builder of the skeleton.")
    recipe: dict[str, Any] = Field(description="Architecture config of the (pruned / distilled) model.")
    source: str = Field(default="", description="URI of the original model.")
    weights: str = Field(default=WEIGHTS_NAME, description="The safetensors file holding every tensor.")
    tensor_encoding: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Tensors stored packed (see slimserve.artifacts.sparse)."
    )
    quantization: dict[str, Any] | None = Field(default=None, description="Quantization recipe, per module.")
    signature: dict[str, Any] = Field(default_factory=dict, description="Open Inference Protocol inputs and outputs.")
    metrics: dict[str, Any] | None = Field(default=None, description="CompressionMetrics, camelCase.")
    within_budget: bool = Field(
        default=True,
        description="False when the compression missed its accuracy budget and kept its best candidate (onBudgetMiss keepBest); servers refuse it unless told.",
    )
    files: dict[str, FileEntry] = Field(description="sha256 and size of every other file of the artifact.")
    created: str = Field(default="", description="UTC time the artifact was written.")
