"""Compression step configs: typed, and round-tripping to the CRD's JSON.

Each config class names its step (`step_kind`); the compression engine registers one transform per config
class (see `slimserve.compression.registry`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from slimserve.api.common import SpecModel

QuantizeMethod = Literal["int8-dynamic", "int8-static", "int8-weight-only", "int4-weight-only", "fp16", "bf16"]
Int4GroupSize = Literal[32, 64, 128, 256]  # the group sizes torch's packed-int4 kernels take


class StepConfigBase(SpecModel):
    step_kind: ClassVar[str]


class OptimizerSpec(SpecModel):
    """The optimizer of a training loop (recovery fine-tuning, distillation)."""

    name: Literal["sgd", "adam", "adamw", "rmsprop"] = Field(
        default="adam",
        description="sgd, adam, adamw (decoupled weight decay) or rmsprop, as torch.optim implements them.",
    )
    learning_rate: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description=(
            "Step size, e.g. 0.01. Unset: the step's own (prune: one chosen for the model's kind; distill: its "
            "learningRate)."
        ),
    )
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0, description="sgd and rmsprop: momentum, e.g. 0.9.")
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0, description="Weight decay (L2; adamw: decoupled), e.g. 0.01.")


class PruneConfig(StepConfigBase):
    """Remove a fraction of channels, attention heads, MLP neurons or layers."""

    step_kind: ClassVar[str] = "prune"

    method: Literal["structured", "unstructured", "depth"] = Field(
        default="structured",
        description=(
            "structured removes whole channels, heads and neurons so the model really gets smaller and faster "
            "(decoders: whole grouped-query groups, a key/value head with its query heads, and MLP neurons, the "
            "same number in every layer); unstructured zeroes single weights by global magnitude (smaller only "
            "once compressed); depth (decoders) removes whole layers, those that change their input least on "
            "the task's text."
        ),
    )
    amount: float = Field(
        gt=0.0,
        lt=1.0,
        description="Fraction to remove, strictly between 0 and 1, e.g. 0.5 removes half of the prunable channels.",
    )
    importance: Literal["magnitude", "taylor"] = Field(
        default="magnitude",
        description=(
            "How structured pruning scores what it removes: magnitude, the L2 norm of the weights that go with it; "
            "taylor, weight times gradient of the task loss over a few training batches (first-order Taylor: what "
            "removing it would cost the loss). With rounds, scored again before each round."
        ),
    )
    finetune_epochs: int = Field(
        default=0,
        ge=0,
        le=100,
        description=(
            "Epochs of recovery fine-tuning on the task data after pruning (after each round, see rounds), e.g. 5. "
            "0 skips it. Classifiers learn the labels and the unpruned model's logits, with a cosine step size; "
            "decoders recover by distillation: the pruned model learns the unpruned model's next-token distributions."
        ),
    )
    rounds: int = Field(
        default=1,
        ge=1,
        le=10,
        description=(
            "structured channel pruning (CNNs, MLPs, exported programs): remove amount in this many equal shares, "
            "e.g. 3, each followed by finetuneEpochs of recovery and the next share scored on the recovered model. "
            "Costs rounds times the recovery's epochs. 1: all at once."
        ),
    )
    keep_layers: list[str] | None = Field(
        default=None,
        max_length=64,
        description=(
            "Module names never pruned, e.g. [\"classifier\"]. The output layer is always kept. Decoders: layers "
            "depth pruning keeps, e.g. [\"layers.0\"] (structured pruning treats all layers alike)."
        ),
    )
    optimizer: OptimizerSpec = Field(
        default_factory=OptimizerSpec, description="The optimizer of recovery fine-tuning (default: adam)."
    )
    l1_penalty: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description=(
            "unstructured: train finetuneEpochs with this L1 penalty on the prunable weights first, e.g. 0.0001, so "
            "that more weights end near zero, then zero the smallest and fine-tune again with them fixed. 0: off."
        ),
    )

    @model_validator(mode="after")
    def _l1_needs_training(self) -> "PruneConfig":
        if self.l1_penalty and (self.method != "unstructured" or not self.finetune_epochs):
            raise ValueError("l1Penalty: needs method unstructured and finetuneEpochs of at least 1")
        if self.rounds > 1 and self.method != "structured":
            raise ValueError("rounds: pruning in rounds needs method structured")
        return self


class QuantizeConfig(StepConfigBase):
    """Store weights (and compute) in low-precision integers or 16-bit floats."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.groupSize) || self.method == 'int4-weight-only'",
                    "message": "quantize.groupSize: only int4-weight-only has groups",
                    "fieldPath": ".groupSize",
                    "reason": "FieldValueInvalid",
                },
                {
                    "rule": "!has(self.int8Layers) || self.method == 'int4-weight-only'",
                    "message": "quantize.int8Layers: only int4-weight-only keeps layers in int8",
                    "fieldPath": ".int8Layers",
                    "reason": "FieldValueInvalid",
                },
                {
                    "rule": "!has(self.algorithm) || self.algorithm == 'rtn' || self.method in ['int8-weight-only', 'int4-weight-only']",
                    "message": "quantize.algorithm: gptq is for int8-weight-only and int4-weight-only",
                    "fieldPath": ".algorithm",
                    "reason": "FieldValueInvalid",
                },
            ]
        }
    }

    step_kind: ClassVar[str] = "quantize"

    method: QuantizeMethod = Field(
        description=(
            "int8-dynamic: int8 weights, activations quantized per batch (Linear, attention). "
            "int8-static: int8 weights and activations calibrated ahead of time (CNNs). "
            "int8-weight-only: int8 weights, float compute. "
            "int4-weight-only: int4 weights and embedding tables in groups (groupSize), packed-int4 kernels on CPU and "
            "GPU (on a CPU, calls of more than 4 rows run on an int8 copy made at load). "
            "fp16 / bf16: every weight and the compute in that 16-bit float, half the size; served in it on GPUs, "
            "in bf16 on CPUs with native bf16 (AVX512-BF16, AMX), cast up to fp32 on other CPUs."
        )
    )
    group_size: Int4GroupSize | None = Field(
        default=None,
        description=(
            "int4-weight-only: input weights sharing one scale and zero point, one of 32, 64, 128, 256 "
            "(smaller is more accurate and larger). Unset: the accuracy-budget search starts at 256 and halves it "
            "before moving layers to int8Layers; set: it starts there."
        ),
    )
    int8_layers: list[str] | None = Field(
        default=None,
        max_length=256,
        description=(
            "int4-weight-only: Linear module names stored in int8 (int8-dynamic) instead, e.g. "
            "[\"layers.5.attention.value\"], and embedding tables kept int8 per row. The accuracy-budget search adds "
            "the most sensitive layers here."
        ),
    )
    algorithm: Literal["rtn", "gptq"] = Field(
        default="rtn",
        description=(
            "How weight-only methods choose their integer weights. rtn rounds each weight to the nearest grid "
            "point. gptq (int8-weight-only, int4-weight-only) quantizes each layer's inputs one at a time and "
            "moves each one's rounding error onto the inputs not yet quantized, weighted by the layer's "
            "calibration inputs (calibrationSamples of the task's training split): closer outputs, same format."
        ),
    )
    calibration_samples: int = Field(
        default=128,
        ge=1,
        le=10000,
        description=(
            "Samples of the task data used to calibrate activation ranges (int8-static) or GPTQ's layer "
            "inputs (algorithm gptq), e.g. 256."
        ),
    )
    keep_float: list[str] | None = Field(
        default=None,
        max_length=256,
        description="Module names left in float, e.g. [\"classifier\"]. The accuracy-budget search adds to this list.",
    )

    @model_validator(mode="after")
    def _groups_only_for_int4(self) -> "QuantizeConfig":
        if self.group_size is not None and self.method != "int4-weight-only":
            raise ValueError("quantize.groupSize: only int4-weight-only has groups")
        if self.int8_layers is not None and self.method != "int4-weight-only":
            raise ValueError("quantize.int8Layers: only int4-weight-only keeps layers in int8")
        if self.algorithm == "gptq" and self.method not in ("int8-weight-only", "int4-weight-only"):
            raise ValueError("quantize.algorithm: gptq is for int8-weight-only and int4-weight-only")
        return self


class StudentSpec(SpecModel):
    """The smaller model a teacher is distilled into: the teacher's architecture, narrower and/or shallower."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.widthMultiplier) || has(self.numLayers)",
                    "message": "student: set widthMultiplier and/or numLayers",
                    "reason": "FieldValueRequired",
                }
            ]
        }
    }

    width_multiplier: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="Fraction of the teacher's channels / hidden width the student keeps, e.g. 0.25.",
    )
    num_layers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Number of layers (transformer blocks, conv blocks) the student keeps, e.g. 3.",
    )

    @model_validator(mode="after")
    def _names_a_student(self) -> "StudentSpec":
        if self.width_multiplier is None and self.num_layers is None:
            raise ValueError("student: set widthMultiplier and/or numLayers")
        return self


class DistillConfig(StepConfigBase):
    """Train a smaller student to mimic the teacher (Hinton knowledge distillation)."""

    step_kind: ClassVar[str] = "distill"

    student: StudentSpec = Field(description="The student's shape relative to the teacher.")
    epochs: int = Field(default=3, ge=1, le=1000, description="Training epochs, e.g. 10.")
    temperature: float = Field(default=2.0, gt=0.0, le=100.0, description="Softmax temperature of the KD loss, e.g. 4.0.")
    alpha: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Weight of the distillation loss against the hard-label loss, e.g. 0.7.",
    )
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0, description="Optimizer learning rate, e.g. 0.001.")
    batch_size: int = Field(default=64, ge=1, le=4096, description="Training batch size, e.g. 64.")
    optimizer: OptimizerSpec = Field(
        default_factory=OptimizerSpec, description="The optimizer (default: adam at learningRate)."
    )

    @model_validator(mode="after")
    def _one_learning_rate(self) -> "DistillConfig":
        if self.optimizer.learning_rate is not None and "learning_rate" in self.model_fields_set:
            raise ValueError("optimizer.learningRate: learningRate is set too; set one of them")
        return self


StepConfig = PruneConfig | QuantizeConfig | DistillConfig


class Step(SpecModel):
    """One compression step: exactly one of prune, quantize, distill."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "[has(self.prune), has(self.quantize), has(self.distill)].filter(x, x).size() == 1",
                    "message": "a step sets exactly one of prune, quantize, distill",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    }

    prune: PruneConfig | None = Field(default=None, description="Structured or unstructured pruning.")
    quantize: QuantizeConfig | None = Field(default=None, description="Integer or 16-bit float quantization.")
    distill: DistillConfig | None = Field(default=None, description="Knowledge distillation into a smaller student.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "Step":
        set_ = [name for name in ("prune", "quantize", "distill") if getattr(self, name) is not None]
        if len(set_) != 1:
            raise ValueError(f"a step sets exactly one of prune, quantize, distill (got {set_ or 'none'})")
        return self

    @property
    def config(self) -> StepConfig:
        return self.prune or self.quantize or self.distill  # type: ignore[return-value]

    @classmethod
    def of(cls, config: StepConfig) -> "Step":
        return cls(**{config.step_kind: config})
