"""A compression run: load, measure the baseline, run the steps under the budget, write the artifact."""

from __future__ import annotations

import time
from functools import partial

import torch

from slimserve.api.compression_job import CompressionJobSpec, CompressionMetrics, ModelMetrics, SparsityMetrics, StepResult
from slimserve.artifacts import SlimServeError, save_artifact
from slimserve.artifacts.artifact import check_output
from slimserve.compression.budget import describe, run_within_budget, step_label, within_budget
from slimserve.compression.checkpoint import Checkpoints, FinishedStep, checkpoint_store, run_key
from slimserve.compression.measure import measure_speeds, model_metrics, sparsity_metrics, untrusted_speeds
from slimserve.compression.progress import CompressionOutcome, ProgressSink, Reporter
from slimserve.compression.report import report_json, report_png
from slimserve.compression.resident import release_mapped_weights, trim_heap
from slimserve.compression.state import Candidate, ModelState, StepContext
from slimserve.compression.task_data import build_task
from slimserve.api.workload import DEFAULTS
from slimserve.models.device import device_label, resolve_device
from slimserve.models.loading import load_model
from slimserve.models.torch_threads import torch_threads

SEED = 0


def compress(
    spec: CompressionJobSpec, sinks: list[ProgressSink], *, output_uri: str | None = None, device: str = DEFAULTS.device,
    generation: int | None = None,
) -> CompressionOutcome:
    """Run the job; sinks get progress, then the result, or the error (which is raised again). `device` is a
    policy name (auto, cpu, cuda, cuda:N): the model, its training and its evaluation run there. Each finished
    step is checkpointed beside the output; a checkpoint of the same spec and `generation` (the
    CompressionJob's) is resumed after its last finished step."""
    reporter = Reporter(sinks, steps_total=len(spec.steps) + 2)
    try:
        with torch_threads(spec.evaluation.threads):
            outcome = _run(spec, reporter, output_uri or spec.output.uri, device, generation)
    except SlimServeError as exc:
        reporter.error(exc.reason, str(exc))
        raise
    except Exception as exc:  # a bug, still reported so the job's status says why it failed
        reporter.error("InternalError", f"{type(exc).__name__}: {exc}")
        raise
    reporter.result(outcome)
    return outcome


def _run(
    spec: CompressionJobSpec, reporter: Reporter, output_uri: str, device_name: str, generation: int | None
) -> CompressionOutcome:
    threads = spec.evaluation.threads
    check_output(output_uri, spec.s3)  # an unwritable destination fails before the first step, not after the last
    torch.manual_seed(SEED)
    device = resolve_device(device_name)
    reporter.begin(0, "load", f"loading {spec.model.uri} onto {device_label(device)}")
    loaded = load_model(spec.model.uri, spec.model.format, spec.s3)
    loaded.model.to(device)
    original = ModelState.of_float(loaded.model, loaded.family, loaded.assets)
    task = build_task(loaded, spec.evaluation, spec.s3, device)
    reporter.update(0.5, "scoring the original model")
    context = StepContext(task, reporter, threads, task.budget(spec.evaluation), task.original_score(original.eager()), original, seed=SEED)
    context.keep_best = spec.evaluation.on_budget_miss == "keepBest"
    context.candidates.append(
        Candidate("baseline", "fp32", context.baseline_metric, original.size_bytes(), original.parameters, accepted=True)
    )
    checkpoints = Checkpoints(checkpoint_store(output_uri, spec.s3), run_key(spec, generation))
    kept: list[FinishedStep] = []
    resumed = checkpoints.resume(original, len(spec.steps))
    if resumed is not None:
        kept, context.candidates, context.within_budget = resumed.steps, resumed.candidates, resumed.within_budget
        reporter.resume(len(kept) + 1, resumed.resumed_from)
        reporter.update(1.0, f"resumed from the checkpoint: {len(kept)} finished step(s), the last {resumed.resumed_from}")

    if spec.evaluation.max_duration_seconds is not None:
        context.deadline = time.monotonic() + spec.evaluation.max_duration_seconds
    state = kept[-1].state if kept else original
    for index, step in enumerate(spec.steps[len(kept):], start=len(kept)):
        config = step.config
        context.where = f"spec.steps[{index}].{config.step_kind}"
        label = step_label(config)
        reporter.begin(index + 1, label)
        torch.manual_seed(SEED + index)  # a step draws the same numbers whether the run was resumed or not
        state, used, metric = run_within_budget(state, config, context)
        note = describe(used) + (f" (budget search; asked: {describe(config)})" if used != config else "")
        if not within_budget(context, metric):
            note += " (outside the accuracy budget: evaluation.onBudgetMiss keepBest)"
        kept.append(FinishedStep(label, state, metric, note))
        checkpoints.save(index, kept[-1], context.candidates, context.within_budget)

    reporter.begin(len(spec.steps) + 1, "write", "measuring the original and the compressed models side by side")
    for step in kept:  # sizing and checkpointing read every tensor again; the compiled copies have their own
        release_mapped_weights(step.state.model)
    trim_heap()  # what scoring the candidates freed, before the original's weights are read again
    baseline, results, speed_warning = _measure_side_by_side(original, kept, context)
    generation = task.tokens_per_second([original.model, *(step.state.model for step in kept)], threads)
    release_mapped_weights(original.model)  # measured; writing needs only the compressed model
    for metrics, speed in zip([baseline, *(result.metrics for result in results)], generation or []):
        metrics.tokens_per_second = speed
    if speed_warning:
        reporter.update(0.3, f"warning: {speed_warning}")
    reporter.update(0.5, f"writing the artifact to {output_uri}")
    compressed = results[-1].metrics
    summary = CompressionMetrics(
        baseline=baseline,
        compressed=compressed,
        size_ratio=round(baseline.size_bytes / compressed.size_bytes, 4),
        speedup=round(compressed.throughput / baseline.throughput, 4),
        accuracy_delta=round(compressed.metric - baseline.metric, 6),
        steps=results,
        within_budget=context.within_budget,
        sparsity=_unstructured_sparsity(kept, baseline, results),
    )
    tensors, quantization = state.tensors()
    inputs, outputs = state.family.signature(state.recipe)
    extra_files = {
        **state.family.asset_files(state.assets),
        "report.json": report_json(
            summary, context.candidates, max_drop=context.max_drop, source=spec.model.uri, speed_warning=speed_warning,
            resumed_from=reporter.resumed_from,
        ),
        "report.png": report_png(summary, context.candidates, max_drop=context.max_drop, speed_warning=speed_warning),
    }
    artifact = save_artifact(
        output_uri,
        family=state.family.name,
        recipe=state.recipe,
        tensors=tensors,
        quantization=quantization,
        signature={"inputs": [_spec_json(s) for s in inputs], "outputs": [_spec_json(s) for s in outputs]},
        metrics=summary.to_json(),
        extra_files=extra_files,
        source=spec.model.uri,
        s3=spec.s3,
        within_budget=context.within_budget,
    )
    checkpoints.remove()
    reporter.update(1.0, f"artifact written: {artifact.digest}")
    return CompressionOutcome(artifact=artifact, metrics=summary)


def _measure_side_by_side(
    original: ModelState, kept: list[FinishedStep], context: StepContext
) -> tuple[ModelMetrics, list[StepResult], str | None]:
    """The baseline's and each step's metrics, their speeds from one interleaved measurement (also set on the
    kept candidates, so the report shows the status's figures), and a warning when they are too unsteady."""
    task = context.task
    models = [original.model, *(step.state.model for step in kept)]
    # One model's mapped pages resident at a time: each model's are released after its turn, read back before the next.
    release = [partial(release_mapped_weights, model) for model in models]
    speeds = measure_speeds([original.eager(), *(step.state.served() for step in kept)], task, threads=context.threads,
                            release=release)
    for candidate, speed in zip([c for c in context.candidates if c.accepted], speeds, strict=True):
        candidate.speed = speed
    baseline = model_metrics(
        speeds[0], task, size_bytes=original.size_bytes(), parameters=original.parameters, metric=context.baseline_metric
    )
    results = [
        StepResult(step=step.label, note=step.note, metrics=model_metrics(
            speed, task, size_bytes=step.state.size_bytes(), parameters=step.state.parameters, metric=step.metric))
        for step, speed in zip(kept, speeds[1:])
    ]
    return baseline, results, untrusted_speeds(["baseline", *(step.label for step in kept)], speeds)


def _unstructured_sparsity(
    kept: list[FinishedStep], baseline: ModelMetrics, results: list[StepResult]
) -> SparsityMetrics | None:
    """The last unstructured prune step's zeros against the model it pruned (the step before it, or the original)."""
    pruned = [index for index, step in enumerate(kept) if step.label == "prune/unstructured"]
    if not pruned:
        return None
    index = pruned[-1]
    step = kept[index]
    return sparsity_metrics(step.label, step.state.tensors()[0], packed_size_bytes=step.state.size_bytes(),
                            pruned=results[index].metrics, dense=results[index - 1].metrics if index else baseline)


def _spec_json(spec) -> dict:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
