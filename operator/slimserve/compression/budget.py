"""The accuracy budget: apply a step, and when it drops the metric more than `evaluation.maxDrop`, retry
with gentler configs (the step kind's relaxations) and keep the first, i.e. most compressed, that fits.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from slimserve.api.steps import DistillConfig, OptimizerSpec, PruneConfig, QuantizeConfig, StepConfig
from slimserve.compression.errors import BudgetExceeded
from slimserve.compression.measure import Speed, measure_speeds
from slimserve.compression.registry import relaxations_for, transform_for
from slimserve.compression.resident import map_from_scratch_file, release_mapped_weights, trim_heap
from slimserve.compression.state import Candidate, ModelState, StepContext, TimeBoxExpired
from slimserve.quant.embedding import QUANTIZED_TABLES

# Metrics are rounded to 6 places in reports: a drop equal to the budget fits.
_TOLERANCE = 1e-6
SEARCH_BUDGET_S = 0.5  # per model and figure, for candidates the search rejects (they are only plotted)


def step_label(config: StepConfig) -> str:
    """`kind/method`, e.g. prune/structured, quantize/int8-dynamic, distill/kd."""
    if isinstance(config, (PruneConfig, QuantizeConfig)):
        return f"{config.step_kind}/{config.method}"
    return f"{config.step_kind}/kd"


def describe(config: StepConfig, model: nn.Module | None = None) -> str:
    """A candidate's config in a few words; given its quantized `model`, with its embedding tables' precision."""
    if isinstance(config, PruneConfig):
        l1 = f" after L1 {config.l1_penalty:g}" if config.l1_penalty else ""
        tuned = f", fine-tuned with {_optimizer(config.optimizer)}" if config.finetune_epochs else ""
        taylor = ", taylor importance" if config.importance == "taylor" else ""
        rounds = f", in {config.rounds} rounds" if config.rounds > 1 else ""
        return f"amount {config.amount:g}{taylor}{rounds}{l1}{tuned}"
    if isinstance(config, QuantizeConfig):
        groups = f", groups of {config.group_size}" if config.group_size else ""
        int8 = f", {_layers(config.int8_layers, 'int8')}" if config.int8_layers else ""
        return f"{config.method}{groups}{int8}, {_layers(config.keep_float or [], 'float')}{_tables(model)}"
    if isinstance(config, DistillConfig):
        student = config.student
        return f"student width {student.width_multiplier or 1:g}, layers {student.num_layers or 'all'}, {_optimizer(config.optimizer)}"
    return type(config).__name__


def _optimizer(spec: OptimizerSpec) -> str:
    """`sgd lr 0.01 momentum 0.9`: the optimizer and what the spec set of it."""
    settings = {"lr": spec.learning_rate, "momentum": spec.momentum, "weight decay": spec.weight_decay}
    return " ".join([spec.name, *(f"{name} {value:g}" for name, value in settings.items() if value)])


def _layers(names: list[str], precision: str) -> str:
    """`2 layer(s) float (a, b)`"""
    return f"{len(names)} layer(s) {precision}" + (f" ({', '.join(names[:4])}{'...' if len(names) > 4 else ''})" if names else "")


def _tables(model: nn.Module | None) -> str:
    """`, tables int4+int8`: the precisions of the model's quantized embedding tables (empty: none)."""
    kinds = sorted({m.kind.removesuffix("-embedding") for m in (model.modules() if model else ()) if isinstance(m, QUANTIZED_TABLES)})
    return f", tables {'+'.join(kinds)}" if kinds else ""


def within_budget(context: StepContext, metric: float) -> bool:
    """Whether `metric` is within the budget: a drop of at most evaluation.maxDrop for a higher-is-better
    metric, an increase of at most evaluation.maxRelativeIncrease (relative) for perplexity."""
    return context.task.degradation(context.baseline_metric, metric) <= context.max_drop + _TOLERANCE


def run_within_budget(state: ModelState, config: StepConfig, context: StepContext) -> tuple[ModelState, StepConfig, float]:
    """(new state, the config that produced it, its metric); BudgetExceeded lists every candidate when none fits,
    unless `context.keep_best`: then the candidate with the best metric is returned (and the run marked outside
    its budget). Once `context.deadline` has passed no further candidate is tried.

    Candidates are scored as they will be served (a quantized one optimized for inference), so the budget
    is judged on the numbers the server will produce.
    """
    transform = transform_for(config)
    label = step_label(config)
    tried: list[Candidate] = []
    best: tuple[ModelState, StepConfig, Candidate] | None = None  # the highest metric so far, for keepBest
    timed_out = False
    try:
        for attempt, candidate_config in enumerate(_candidates(state, config, context)):
            if attempt:  # the spec's own config is always tried
                context.check_time_box()
            # Candidate k gets the slice [1 - 2^-k, 1 - 2^-(k+1)] of the step (scaled to leave room to measure).
            context.reporter.span(0.9 * (1 - 0.5**attempt), 0.9 * (1 - 0.5 ** (attempt + 1)))
            context.reporter.update(0.0, f"{label}: trying {describe(candidate_config)}")
            candidate_state = transform(state, candidate_config, context)
            release_mapped_weights(state.model)  # read to build the candidate, not needed to score it
            if candidate_state.quantization is not None:  # its compiled copy keeps prepacked weights of its own
                map_from_scratch_file(candidate_state.model)
            trim_heap()  # the transform's temporaries, freed but still resident in malloc's arenas
            metric = context.task.score(candidate_state.served())
            candidate = Candidate(
                step=label, label=describe(candidate_config, candidate_state.model), metric=metric, size_bytes=candidate_state.size_bytes(),
                parameters=candidate_state.parameters,
            )
            tried.append(candidate)
            context.candidates.append(candidate)
            if within_budget(context, metric):  # its speed is measured with the run's other kept models
                candidate.accepted = True
                context.reporter.span(0.0, 1.0)
                return candidate_state, candidate_config, metric
            candidate.speed = _speed_beside_original(candidate_state, context)
            if context.keep_best and (best is None or context.task.degradation(best[2].metric, metric) < 0):  # a better one
                best = (candidate_state, candidate_config, candidate)
    except TimeBoxExpired:
        timed_out = True
    missed = (
        f"{context.where}: no candidate keeps {context.task.metric_name} within {context.task.budget_field} {context.max_drop:g} "
        f"of the baseline {context.baseline_metric:.4f}"
        + (" before evaluation.maxDurationSeconds ran out" if timed_out else "")
        + "; tried: "
        + "; ".join(f"{c.label} -> {c.metric:.4f} (worse by {context.task.degradation(context.baseline_metric, c.metric):.4f})" for c in tried)
    )
    if best is None:
        raise BudgetExceeded(missed)
    best_state, best_config, best_candidate = best
    best_candidate.accepted = True
    context.within_budget = False
    context.reporter.span(0.0, 1.0)
    context.reporter.update(0.9, f"{missed}; keeping the best, {best_candidate.label} (evaluation.onBudgetMiss keepBest)")
    return best_state, best_config, best_candidate.metric


def _candidates(state: ModelState, config: StepConfig, context: StepContext) -> Iterator[StepConfig]:
    yield config
    relaxations = relaxations_for(config)
    if relaxations is not None:
        yield from relaxations(state, config, context)


def _speed_beside_original(state: ModelState, context: StepContext) -> Speed:
    """A rejected candidate's speed, measured as the kept ones are (in rounds with the original), but briefly."""
    return measure_speeds([context.original.eager(), state.served()], context.task, threads=context.threads,
                          budget_s=SEARCH_BUDGET_S)[1]
