"""The CompressionJob resource: compress one model through a list of steps under an accuracy budget."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from slimserve.api.common import (
    API_VERSION,
    ARTIFACT_URI_PATTERN,
    DNS_LABEL_PATTERN,
    MODEL_URI_PATTERN,
    Condition,
    HfTokenSecret,
    ResourceKind,
    ResourceRequirements,
    SpecModel,
    StatusModel,
)
from slimserve.api.steps import Step
from slimserve.api.storage import ArtifactRef, S3Spec

ModelFormat = Literal["auto", "transformers", "torch-export", "torchvision", "slimserve"]
Metric = Literal["auto", "accuracy", "cosine", "perplexity"]
DEFAULT_MAX_RELATIVE_INCREASE = 0.05  # the perplexity budget when evaluation.maxRelativeIncrease is unset
DEFAULT_NODE_POOL = "cpu"


class ModelSource(SpecModel):
    """Where the model to compress is read from."""

    uri: str = Field(
        pattern=MODEL_URI_PATTERN,
        max_length=2048,
        description=(
            "builtin://digits-cnn or builtin://minilm-l6 (demo models shipped with SlimServe), "
            "file:///path, pvc://CLAIM/path (mounted by the operator), s3://bucket/key, "
            "http(s)://HOST/path (?sha256=HEX pinning its bytes) or hf://ORG/NAME[@REVISION]."
        ),
    )
    hf_token_secret: HfTokenSecret = None
    format: ModelFormat = Field(
        default="auto",
        description=(
            "transformers: a Hugging Face directory (config.json + safetensors); torch-export: a .pt2 program; "
            "torchvision: a directory of vision.json (architecture, num_classes, input_size, preprocessing) and "
            "model.safetensors; "
            "slimserve: an artifact written by an earlier CompressionJob; auto: decided from the files."
        ),
    )


class DatasetSource(SpecModel):
    """Task data for evaluation, calibration and fine-tuning."""

    uri: str = Field(
        pattern=MODEL_URI_PATTERN,
        max_length=2048,
        description=(
            "builtin://digits or builtin://sentences, or file/pvc/s3 URI of a .npz (arrays x and y) "
            "or a .txt file (one sentence a line, for embedding models)."
        ),
    )


class EvaluationSpec(SpecModel):
    """How the compressed model is compared with the original, and how much worse it may be."""

    dataset: DatasetSource | None = Field(
        default=None, description="Held-out data; optional for builtin models, which bring their own."
    )
    metric: Metric = Field(
        default="auto",
        description=(
            "accuracy (classifiers), cosine (mean cosine similarity of embeddings to the original's) or perplexity "
            "(decoders: exp of the mean negative log-likelihood of the held-out text's next tokens, lower is "
            "better); auto picks by model."
        ),
    )
    max_drop: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description=(
            "The accuracy budget of a higher-is-better metric (accuracy, cosine): largest allowed drop of the "
            "metric, as a fraction, e.g. 0.01 (one point). Not used for perplexity (see maxRelativeIncrease)."
        ),
    )
    max_relative_increase: float | None = Field(
        default=None,
        ge=0.0,
        le=10.0,
        description=(
            "The budget of a lower-is-better metric (perplexity): largest allowed increase over the original "
            "model's value, relative to it, e.g. 0.02 allows perplexity 10.0 to become at most 10.2. The "
            f"budget search keeps the most compressed candidate within it. Unset: {DEFAULT_MAX_RELATIVE_INCREASE}. "
            "Only for perplexity."
        ),
    )
    threads: int = Field(default=2, ge=1, le=256, description="CPU threads for latency and throughput measurements.")
    max_duration_seconds: int | None = Field(
        default=None,
        ge=1,
        le=604800,
        description=(
            "Time box of the accuracy-budget search, in seconds from the first step, e.g. 1800: once it has "
            "passed, no gentler candidate is tried, so a step keeps the most compressed candidate within budget "
            "found so far, and onBudgetMiss decides when there is none. Unset: no limit."
        ),
    )
    on_budget_miss: Literal["fail", "keepBest"] = Field(
        default="fail",
        description=(
            "When no candidate of a step keeps the metric within maxDrop (or the time box ran out first): fail "
            "fails the job; keepBest keeps the candidate with the best metric and writes the artifact marked "
            "withinBudget: false (manifest and status), which a ModelService serves only with "
            "spec.model.allowOutsideBudget."
        ),
    )


class OutputSpec(SpecModel):
    """Where the compressed artifact is written."""

    uri: str = Field(
        pattern=ARTIFACT_URI_PATTERN,
        max_length=2048,
        description="file:///path, pvc://CLAIM/path or s3://bucket/prefix of the artifact directory.",
    )


_CJ_RULES = [
    {
        "rule": "!self.steps.exists(s, has(s.quantize)) || has(self.steps[size(self.steps) - 1].quantize)",
        "message": "spec.steps: quantize must be the last step (nothing can be pruned or distilled after it)",
        "fieldPath": ".steps",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "self.steps.filter(s, has(s.quantize)).size() <= 1",
        "message": "spec.steps: at most one quantize step",
        "fieldPath": ".steps",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "self.output.uri != self.model.uri",
        "message": "spec.output.uri: must differ from spec.model.uri (the original is never overwritten)",
        "fieldPath": ".output.uri",
        "reason": "FieldValueInvalid",
    },
]


class CompressionJobSpec(SpecModel):
    """Desired compression: the model, the steps in order, the accuracy budget and where the result goes."""

    model_config = {"json_schema_extra": {"x-kubernetes-validations": _CJ_RULES}}

    model: ModelSource = Field(description="The model to compress.")
    steps: list[Step] = Field(
        min_length=1,
        max_length=16,
        description="Compression steps, run in order; quantize, if present, comes last.",
    )
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, json_schema_extra={"default": {}}, description="Evaluation against the original and the accuracy budget."
    )
    output: OutputSpec = Field(description="Where the compressed artifact is written.")
    node_pool: str = Field(
        default=DEFAULT_NODE_POOL,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="Node pool of the compression pod, as named in the operator's configuration, e.g. cpu or gpu.",
    )
    resources: ResourceRequirements | None = Field(default=None, description="Resources of the compression pod.")
    s3: S3Spec | None = Field(default=None, description="Object-store access for s3:// URIs.")
    active_deadline_seconds: int = Field(
        default=3600, ge=60, le=604800, description="The Job's deadline in seconds, e.g. 1800."
    )
    backoff_limit: int = Field(default=0, ge=0, le=10, description="Retries of a failed compression pod, e.g. 2.")

    @model_validator(mode="after")
    def _cross_field_rules(self) -> "CompressionJobSpec":
        # Mirrors _CJ_RULES (CEL) for manifests validated without an API server (`slimserve run`).
        kinds = [step.config.step_kind for step in self.steps]
        if "quantize" in kinds and kinds[-1] != "quantize":
            raise ValueError(_CJ_RULES[0]["message"])
        if kinds.count("quantize") > 1:
            raise ValueError(_CJ_RULES[1]["message"])
        if self.output.uri == self.model.uri:
            raise ValueError(_CJ_RULES[2]["message"])
        return self


# ---- status -------------------------------------------------------------------------------------------

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Invalid"]


class ModelMetrics(StatusModel):
    """Measurements of one model, all taken with the same threads and inputs."""

    size_bytes: int = Field(description="Size of the serialized weights in bytes.")
    parameters: int = Field(description="Number of parameters (after pruning or distillation).")
    latency_p50_ms: float = Field(description="Median latency at batch 1, milliseconds.")
    throughput: float = Field(description="Samples per second at batch 32.")
    metric: float = Field(
        description="Task metric: accuracy or cosine similarity (0..1, higher is better), or perplexity (>= 1, lower is better)."
    )
    metric_name: str = Field(default="", description="Which metric: accuracy, cosine or perplexity.")
    tokens_per_second: float | None = Field(
        default=None,
        description="Decoders: tokens generated per second at concurrency 1 (one sequence, greedy, with the KV cache).",
    )


class StepResult(StatusModel):
    step: str = Field(description="Step kind and method, e.g. prune/structured.")
    metrics: ModelMetrics = Field(description="The model after this step.")
    note: str = Field(default="", description="What the step did, e.g. the prune amount kept by the budget search.")


class SparsityMetrics(StatusModel):
    """What unstructured pruning bought: zeros stored compactly, and whether they made inference faster."""

    step: str = Field(description="The unstructured prune step measured, e.g. prune/unstructured.")
    zero_fraction: float = Field(description="Share of the model's weight elements that are zero after it, 0..1.")
    packed_size_bytes: int = Field(description="The weights as the artifact stores them (zeros packed as a bitmask).")
    dense_size_bytes: int = Field(description="The same weights stored dense.")
    speedup: float = Field(
        description="Throughput of the pruned model over the same model before pruning (dense), measured side by "
        "side in this run."
    )
    faster: bool = Field(description="Whether the zeros made inference measurably faster.")
    statement: str = Field(
        description="The verdict in words, e.g. not faster (dense kernels): 0.99x the throughput of the dense model."
    )


class CompressionMetrics(StatusModel):
    baseline: ModelMetrics = Field(description="The original model.")
    compressed: ModelMetrics = Field(description="The compressed model.")
    size_ratio: float = Field(description="Baseline size over compressed size (2.0 means half the size).")
    speedup: float = Field(description="Compressed throughput over baseline throughput.")
    accuracy_delta: float = Field(description="Compressed metric minus baseline metric (negative is a drop).")
    steps: list[StepResult] = Field(default_factory=list, description="Metrics after each step.")
    within_budget: bool = Field(
        default=True,
        description="False when a step missed evaluation.maxDrop and evaluation.onBudgetMiss kept its best candidate.",
    )
    sparsity: SparsityMetrics | None = Field(
        default=None, description="Set when a step pruned unstructured: its zeros, packed size and measured speed."
    )


class Progress(StatusModel):
    step: str = Field(default="", description="The step running now, e.g. quantize/int8-dynamic.")
    step_index: int = Field(default=0, description="0-based index of that step.")
    steps_total: int = Field(default=0, description="Number of steps, evaluation included.")
    fraction: float = Field(default=0.0, description="Overall progress, 0..1.")
    message: str = Field(default="", description="Latest progress message.")
    step_fraction: float | None = Field(default=None, description="Progress within the running step, 0..1.")
    step_eta_seconds: float | None = Field(
        default=None, description="Estimated seconds until the running step ends, from its progress so far."
    )
    eta_seconds: float | None = Field(
        default=None, description="Estimated seconds until the run ends, from the overall progress so far."
    )
    resumed_from: str | None = Field(
        default=None,
        description="Set when this run continued from a checkpoint: the last finished step it did not repeat, e.g. spec.steps[0] prune/structured.",
    )


class CompressionJobStatus(StatusModel):
    observed_generation: int | None = Field(default=None, description="The generation this status describes.")
    phase: Phase | None = Field(default=None, description="Pending, Running, Succeeded, Failed or Invalid.")
    conditions: list[Condition] = Field(default_factory=list, description="Succeeded summarises the job; also Started.")
    progress: Progress | None = Field(default=None, description="Live progress while running.")
    start_time: datetime | None = Field(default=None, description="When the compression pod started.")
    completion_time: datetime | None = Field(default=None, description="When the job finished.")
    job_name: str | None = Field(default=None, description="The batch/v1 Job running this generation.")
    artifact: ArtifactRef | None = Field(default=None, description="The artifact, once written.")
    metrics: CompressionMetrics | None = Field(default=None, description="Baseline vs compressed, per step.")


class CompressionJob(SpecModel, ResourceKind):
    """A whole CompressionJob manifest."""

    kind: ClassVar[str] = "CompressionJob"
    plural: ClassVar[str] = "compressionjobs"
    singular: ClassVar[str] = "compressionjob"
    # `cj` alone is shadowed by batch CronJob in kubectl, so `cjob` comes first.
    short_names: ClassVar[list[str]] = ["cjob", "cj"]
    description: ClassVar[str] = (
        "CompressionJob compresses one model (prune, distill, quantize), evaluates it against the original "
        "under an accuracy budget, and writes a checksummed artifact that a ModelService can serve."
    )

    model_config = {"extra": "ignore"}

    api_version: Literal["slimserve.io/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind_: Literal["CompressionJob"] = Field(default="CompressionJob", alias="kind")
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: CompressionJobSpec
    status: CompressionJobStatus | None = None
