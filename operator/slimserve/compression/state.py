"""The model as it moves through the steps, and the context every step runs in."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimserve.compression.measure import Speed, count_parameters, serialized_size, speed_json
from slimserve.compression.progress import Reporter
from slimserve.compression.resident import release_mapped_weights, trim_heap
from slimserve.compression.tasks import Forward, Task
from slimserve.models.device import host_tensors, model_device, to_device
from slimserve.models.families import ModelFamily, eager_forward
from slimserve.quant.base import set_training

if TYPE_CHECKING:
    from slimserve.api.steps import QuantizeConfig


class TimeBoxExpired(Exception):
    """evaluation.maxDurationSeconds has passed: the budget search stops trying gentler candidates."""


@dataclass
class ModelState:
    """A model after some steps. Steps never mutate a state: they return a new one (the search retries)."""

    model: nn.Module
    family: ModelFamily
    recipe: dict[str, Any]  # architecture of the fp32 structure (read before quantization replaces modules)
    parameters: int
    assets: Path | None = None
    quantization: "QuantizeConfig | None" = None
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # unstructured-pruning masks by parameter name
    _optimized: Forward | None = field(default=None, repr=False)
    _size_bytes: int | None = field(default=None, repr=False)

    @classmethod
    def of_float(cls, model: nn.Module, family: ModelFamily, assets: Path | None, masks=None) -> "ModelState":
        set_training(model, False)
        return cls(model, family, family.recipe_of(model), count_parameters(model), assets, masks=dict(masks or {}))

    def float_copy(self, *, share_weights: bool = False) -> nn.Module:
        """A copy of the float model to transform. `share_weights`: its tensors are the original's (no memory
        of its own), for transforms that replace modules rather than write into weights (quantization)."""
        if self.quantization is not None:
            raise ValueError("the model is already quantized; quantize must be the last step")
        if share_weights:
            from slimserve.quant.sharing import copy_sharing_weights

            return copy_sharing_weights(self.model)
        return copy.deepcopy(self.model)

    def quantized(self, model: nn.Module, config: "QuantizeConfig") -> "ModelState":
        model, assets = self.family.restructured(set_training(model, False), self.assets)
        return replace(self, model=model, quantization=config, assets=assets, _optimized=None, _size_bytes=None)

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
        """What the artifact stores: (tensors, quantization recipe or None)."""
        if self.quantization is None:
            return host_tensors(self.model.state_dict()), None
        from slimserve.quant import quantization_state

        tensors, recipe = quantization_state(self.model)
        return tensors, recipe

    def size_bytes(self) -> int:
        if self._size_bytes is None:  # a state's model never changes: serialize it once
            self._size_bytes = serialized_size(self.tensors()[0])
        return self._size_bytes

    def eager(self) -> Forward:
        return eager_forward(self.model)

    def served(self) -> Forward:
        """The forward the server will run: optimized once for quantized models, eager for float ones and for
        families the server runs eager (decoders)."""
        if self.quantization is None or self.family.served_eager:
            return self.eager()
        if self._optimized is None:
            from slimserve.quant import optimize_for_inference

            example = to_device(self.family.example_inputs(self.assets), model_device(self.model))
            self._optimized = optimize_for_inference(self.model, example)
            release_mapped_weights(self.model)  # the compiled copy reads again only what it did not prepack
            trim_heap()  # the compiler's working memory, freed but still resident in malloc's arenas
        return self._optimized


@dataclass
class Candidate:
    """One model tried for a step (the report plots all of them). `speed` is measured side by side with the
    original: the kept candidates' in the run's final measurement, the same figures the status reports."""

    step: str
    label: str
    metric: float
    size_bytes: int
    parameters: int
    speed: Speed | None = None
    accepted: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "step": self.step, "label": self.label, "metric": round(self.metric, 6), "sizeBytes": self.size_bytes,
            "parameters": self.parameters, **(speed_json(self.speed) if self.speed else {}), "accepted": self.accepted,
        }


@dataclass
class StepContext:
    """What a step needs besides the model: data, budget, the original model's outputs, progress."""

    task: Task
    reporter: Reporter
    threads: int
    max_drop: float
    baseline_metric: float
    original: ModelState
    where: str = "spec.steps"  # the spec path of the step running now, for error messages
    seed: int = 0
    candidates: list[Candidate] = field(default_factory=list)
    deadline: float | None = None  # time.monotonic() after which the budget search tries no gentler candidate
    keep_best: bool = False  # evaluation.onBudgetMiss keepBest: a step that misses the budget keeps its best candidate
    within_budget: bool = True  # False once a step kept a candidate outside the budget
    _teacher_cache: list[tuple[nn.Module, torch.Tensor]] = field(default_factory=list)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def check_time_box(self) -> None:
        """Raise TimeBoxExpired once the search's time box has passed (for long searches between candidates)."""
        if self.out_of_time():
            raise TimeBoxExpired()

    def teacher_outputs(self, state: ModelState) -> torch.Tensor:
        """Outputs of `state`'s model on the training split (cached per model), the targets of distillation."""
        for model, outputs in self._teacher_cache:
            if model is state.model:
                return outputs
        outputs = self.task.outputs(state.eager(), "train")
        self._teacher_cache.append((state.model, outputs))
        return outputs
