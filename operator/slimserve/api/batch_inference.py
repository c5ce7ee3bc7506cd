"""The BatchInference resource: score a whole dataset with a model on the pods of an Indexed Job.

Each shard (one Job index) writes one output part and reports its progress in `status.shardProgress[<index>]`
only; the operator owns every other status field and aggregates them from those entries and the Job.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from slimserve.api.common import (
    API_VERSION,
    DNS_LABEL_PATTERN,
    Condition,
    ResourceKind,
    ResourceRequirements,
    SpecModel,
    StatusModel,
)
from slimserve.api.compression_job import DEFAULT_NODE_POOL
from slimserve.api.model_service import ModelReference
from slimserve.api.storage import S3Spec

InputFormat = Literal["jsonl", "parquet", "npy", "npz"]
OutputFormat = Literal["jsonl", "parquet"]
# The extension of an input file says its format when `input.format` is unset.
INPUT_FORMAT_EXTENSIONS: dict[str, str] = {".jsonl": "jsonl", ".parquet": "parquet", ".npy": "npy", ".npz": "npz"}
DATASET_URI_PATTERN = r"^(file|pvc|s3)://[^\s]+$"
MAX_SHARDS = 1000  # every shard has an entry in the status, which must stay well under etcd's object limit


def input_format_of(path: str) -> str | None:
    """The format an input file's extension names (`data/x.jsonl` -> jsonl), None for any other."""
    return INPUT_FORMAT_EXTENSIONS.get(PurePosixPath(path).suffix.lower())


def is_prefix(uri: str) -> bool:
    return uri.endswith("/")


_EXTENSION_RULE = "(" + "|".join(ext.replace(".", "\\\\.") for ext in INPUT_FORMAT_EXTENSIONS) + ")$"

_INPUT_RULES = [
    {
        "rule": f"has(self.format) || self.uri.endsWith('/') || self.uri.lowerAscii().matches('{_EXTENSION_RULE}')",
        "message": "spec.input.format: unknown for this file; name one of jsonl, parquet, npy, npz "
        "(or use a file ending in .jsonl, .parquet, .npy or .npz)",
        "fieldPath": ".format",
        "reason": "FieldValueRequired",
    },
]

_OUTPUT_RULES = [
    {
        "rule": "self.uri.endsWith('/')",
        "message": "spec.output.uri: must be a prefix ending in '/', under which the parts and the manifest are written",
        "fieldPath": ".uri",
        "reason": "FieldValueInvalid",
    },
]

_SPEC_RULES = [
    {
        "rule": "self.maxFailedShards <= (has(self.shards) ? self.shards : self.parallelism)",
        "message": "spec.maxFailedShards: must not exceed spec.shards (spec.parallelism when shards is unset)",
        "fieldPath": ".maxFailedShards",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "!self.input.uri.endsWith('/') || !self.output.uri.startsWith(self.input.uri)",
        "message": "spec.output.uri: must not lie under the input prefix (a re-run would read the results as input)",
        "fieldPath": ".output.uri",
        "reason": "FieldValueInvalid",
    },
]


class BatchInput(SpecModel):
    """The dataset to score and how its records map onto the model's inputs."""

    model_config = {"json_schema_extra": {"x-kubernetes-validations": _INPUT_RULES}}

    uri: str = Field(
        pattern=DATASET_URI_PATTERN,
        max_length=2048,
        description=(
            "file:///data/x.jsonl, pvc://CLAIM/path or s3://bucket/key of one file, or a prefix ending in '/' "
            "whose files are all read (sorted by name)."
        ),
    )
    format: InputFormat | None = Field(
        default=None,
        description="jsonl, parquet, npy or npz; unset: from each file's extension.",
    )
    fields: dict[str, str] | None = Field(
        default=None,
        max_length=64,
        description=(
            'Which column (or JSON key, or .npz array) feeds each model input, e.g. {"input_ids": "text"}; '
            "unset: the columns named as the model's inputs."
        ),
    )
    id_field: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="A column copied into each output record as its id; unset: the record's position.",
    )

    @model_validator(mode="after")
    def _format_known(self) -> "BatchInput":
        # Mirrors _INPUT_RULES (CEL) for manifests validated without an API server (`slimserve run`).
        if self.format is None and not is_prefix(self.uri) and input_format_of(self.uri) is None:
            raise ValueError(_INPUT_RULES[0]["message"])
        return self


class BatchOutput(SpecModel):
    """Where the results go: one part per shard and a manifest, under one prefix."""

    model_config = {"json_schema_extra": {"x-kubernetes-validations": _OUTPUT_RULES}}

    uri: str = Field(
        pattern=DATASET_URI_PATTERN,
        max_length=2048,
        description="Prefix ending in '/' (file://, pvc://CLAIM/path/ or s3://bucket/prefix/) of the parts and _manifest.json.",
    )
    format: OutputFormat = Field(default="jsonl", description="jsonl or parquet, e.g. parquet.")
    overwrite: bool = Field(
        default=False,
        description="Replace the results of another run found under the prefix; false refuses to touch them.",
    )

    @model_validator(mode="after")
    def _prefix(self) -> "BatchOutput":
        if not is_prefix(self.uri):
            raise ValueError(_OUTPUT_RULES[0]["message"])
        return self


class BatchInferenceSpec(SpecModel):
    """Desired batch scoring: the model, the dataset, where the results go, and how it is split into shards."""

    model_config = {"json_schema_extra": {"x-kubernetes-validations": _SPEC_RULES}}

    model: ModelReference = Field(description="The model: an artifact URI or a CompressionJob's artifact.")
    input: BatchInput = Field(description="The dataset to score.")
    output: BatchOutput = Field(description="Where the results are written.")
    shards: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SHARDS,
        description=(
            "Number of shards (Job indexes), each scoring a contiguous part of the input; unset: one per "
            "parallel pod (spec.parallelism) on a cluster, one per input file with `slimserve batch`."
        ),
    )
    parallelism: int = Field(default=2, ge=1, le=MAX_SHARDS, description="Shards scored at the same time, e.g. 4.")
    batch_size: int = Field(default=64, ge=1, le=4096, description="Records per model call, e.g. 64.")
    node_pool: str = Field(
        default=DEFAULT_NODE_POOL,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="Node pool of the pods, as named in the operator's configuration, e.g. cpu or gpu.",
    )
    resources: ResourceRequirements | None = Field(default=None, description="Resources of each pod.")
    active_deadline_seconds: int | None = Field(
        default=None, ge=60, le=604800, description="Deadline of the whole Job in seconds, e.g. 7200; unset: none."
    )
    max_failed_shards: int = Field(
        default=0,
        ge=0,
        le=MAX_SHARDS,
        description="Shards that may fail (after their retries) while the others go on; one more fails the run.",
    )
    backoff_limit_per_index: int = Field(default=1, ge=0, le=10, description="Retries of each shard's pod, e.g. 2.")
    s3: S3Spec | None = Field(default=None, description="Object-store access for s3:// URIs.")

    @property
    def shard_count(self) -> int:
        """Shards on a cluster: the operator never lists the input, so an unset count follows parallelism."""
        return self.shards if self.shards is not None else self.parallelism

    @model_validator(mode="after")
    def _cross_field_rules(self) -> "BatchInferenceSpec":
        # Mirrors _SPEC_RULES (CEL) for manifests validated without an API server (`slimserve run`).
        if self.max_failed_shards > self.shard_count:
            raise ValueError(_SPEC_RULES[0]["message"])
        if is_prefix(self.input.uri) and self.output.uri.startswith(self.input.uri):
            raise ValueError(_SPEC_RULES[1]["message"])
        return self


# ---- status -------------------------------------------------------------------------------------------

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Invalid"]
ShardState = Literal["Running", "Succeeded", "Failed", "Skipped"]


class PartRef(StatusModel):
    uri: str = Field(description="Where the shard's part was written.")
    digest: str = Field(description="sha256 of the part, e.g. sha256:ab12...")
    records: int = Field(description="Records in the part.")


class ManifestRef(StatusModel):
    uri: str = Field(description="Where _manifest.json was written.")
    digest: str = Field(description="sha256 of _manifest.json, e.g. sha256:ab12...")


class ShardProgress(StatusModel):
    """One shard's own report: the pod of that index is its only writer."""

    generation: int = Field(description="The generation the pod runs; an entry of an older one is ignored.")
    state: ShardState = Field(description="Running, Succeeded, Failed or Skipped (its part already verified).")
    records_done: int = Field(default=0, description="Records scored so far.")
    records_total: int | None = Field(default=None, description="Records of the shard, once known.")
    message: str = Field(default="", description="What went wrong (file, line or row and why), or the latest news.")
    part: PartRef | None = Field(default=None, description="The shard's part, once written.")
    manifest: ManifestRef | None = Field(
        default=None, description="The run's manifest, reported by the pod that wrote it."
    )


class ShardCounts(StatusModel):
    total: int = Field(default=0, description="Shards of this generation.")
    done: int = Field(default=0, description="Shards that succeeded (or were skipped, their part verified).")
    failed: int = Field(default=0, description="Shards that failed after their retries.")
    running: int = Field(default=0, description="Shards whose pod is running now.")


class BatchOutputStatus(StatusModel):
    manifest_uri: str | None = Field(default=None, description="The run's _manifest.json, once every part is written.")
    manifest_digest: str | None = Field(default=None, description="sha256 of the manifest, e.g. sha256:ab12...")


class BatchInferenceStatus(StatusModel):
    observed_generation: int | None = Field(default=None, description="The generation this status describes.")
    phase: Phase | None = Field(default=None, description="Pending, Running, Succeeded, Failed or Invalid.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Succeeded summarises the run; also Ready and Stalled."
    )
    job_name: str | None = Field(default=None, description="The batch/v1 Job running this generation.")
    progress: str | None = Field(default=None, description="Records done of the total, e.g. 1200/5000.")
    records_done: int | None = Field(default=None, description="Records scored, all shards together.")
    records_total: int | None = Field(default=None, description="Records of the dataset, once every shard knows its own.")
    records_per_second: float | None = Field(default=None, description="Records scored per second since the start.")
    shards: ShardCounts | None = Field(default=None, description="Shards total, done, failed and running.")
    shard_progress: dict[str, ShardProgress] = Field(
        default_factory=dict, description="Each shard's report, keyed by its index; written by the shard's pod."
    )
    output: BatchOutputStatus | None = Field(default=None, description="The results' manifest.")
    model_uri: str | None = Field(default=None, description="The model artifact scoring this generation.")
    model_digest: str | None = Field(default=None, description="Digest of that artifact, pinned into the pods.")
    start_time: datetime | None = Field(default=None, description="When the Job started.")
    completion_time: datetime | None = Field(default=None, description="When the run finished.")


class BatchInference(SpecModel, ResourceKind):
    """A whole BatchInference manifest."""

    kind: ClassVar[str] = "BatchInference"
    plural: ClassVar[str] = "batchinferences"
    singular: ClassVar[str] = "batchinference"
    short_names: ClassVar[list[str]] = ["binf"]
    description: ClassVar[str] = (
        "BatchInference scores a whole dataset with one model on the parallel pods of an Indexed Job, one "
        "output part per shard plus a manifest with counts and digests; a re-run resumes from the parts written."
    )

    model_config = {"extra": "ignore"}

    api_version: Literal["slimserve.io/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind_: Literal["BatchInference"] = Field(default="BatchInference", alias="kind")
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: BatchInferenceSpec
    status: BatchInferenceStatus | None = None
