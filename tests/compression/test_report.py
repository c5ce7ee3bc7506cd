"""The report: its kept candidates show the status's (and the table's) figures, unsteady speeds are flagged,
and no two texts of the picture overlap."""

from __future__ import annotations

import io
import json
from itertools import combinations

import torch
from matplotlib.text import Text
from rich.console import Console

from slimserve.api.compression_job import CompressionMetrics, ModelMetrics, StepResult
from slimserve.compression import compress
from slimserve.compression.measure import MAX_TRUSTED_SPREAD, SPARSE_SPEEDUP_MARGIN, Figure, Speed, sparsity_metrics
from slimserve.compression.report import report_figure, report_json, text_box
from slimserve.compression.state import Candidate
from slimserve.local.summary import metrics_table


def _render(table) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(table)
    return console.file.getvalue()


def test_kept_candidates_show_the_figures_of_the_status_and_the_table(tmp_path, make_spec, sink):
    # 0.9 breaks the budget, so the search also measures a rejected candidate.
    spec = make_spec(tmp_path / "out", model="builtin://digits-mlp",
                     steps=[{"prune": {"amount": 0.9, "finetuneEpochs": 1}}], evaluation={"maxDrop": 0.02})
    metrics = compress(spec, [sink]).metrics
    report = json.loads((tmp_path / "out" / "report.json").read_text())

    kept = [c for c in report["candidates"] if c["accepted"]]
    assert [c["step"] for c in kept] == ["baseline", "prune/structured"]
    for candidate, figures in zip(kept, [metrics.baseline, *(s.metrics for s in metrics.steps)], strict=True):
        assert (candidate["latencyP50Ms"], candidate["throughput"]) == (figures.latency_p50_ms, figures.throughput)
        assert candidate["latencySpread"] >= 0 and candidate["rounds"] >= 7
    rejected = [c for c in report["candidates"] if not c["accepted"]]
    assert rejected and all(c["latencyP50Ms"] > 0 and "throughputSpread" in c for c in rejected)
    assert report["speed"]["maxTrustedSpread"] == MAX_TRUSTED_SPREAD
    assert report["speed"]["trusted"] == (report["speed"]["warning"] is None)

    table = _render(metrics_table("digits", metrics, report))
    for candidate, row_label in zip(kept, ["baseline (fp32)", "after prune/structured"]):
        row = next(line for line in table.splitlines() if row_label in line)
        assert f"{candidate['latencyP50Ms']:.3f} ±{candidate['latencySpread'] / 2:.0%}" in row
        assert f"{candidate['throughput']:,.0f} ±{candidate['throughputSpread'] / 2:.0%}" in row
    assert "interquartile range" in table


def test_an_l1_trained_magnitude_pruned_model_reports_its_zeros_and_measured_speed_against_dense(
    tmp_path, make_spec, sink
):
    spec = make_spec(tmp_path / "out", model="builtin://digits-mlp", steps=[{"prune": {
        "method": "unstructured", "amount": 0.7, "finetuneEpochs": 1, "l1Penalty": 1e-4}}], evaluation={"maxDrop": 0.05})
    metrics = compress(spec, [sink]).metrics
    report = json.loads((tmp_path / "out" / "report.json").read_text())

    sparsity = metrics.sparsity
    assert report["metrics"]["sparsity"] == sparsity.to_json()
    assert sparsity.step == "prune/unstructured" and 0.5 < sparsity.zero_fraction < 0.8
    assert sparsity.packed_size_bytes == metrics.compressed.size_bytes < 0.7 * sparsity.dense_size_bytes
    # Same shapes before and after: the ratio is of the two figures measured side by side in this run.
    assert sparsity.speedup == round(metrics.compressed.throughput / metrics.baseline.throughput, 4)
    verdict = "faster: " if sparsity.faster else "not faster (dense kernels): "
    assert sparsity.statement.startswith(f"{verdict}{sparsity.speedup:.2f}x the throughput of the dense model")
    assert sparsity.statement in " ".join(_render(metrics_table("digits", metrics, report)).split())  # caption wraps
    assert sparsity.statement in report_figure(metrics, [], max_drop=0.05).get_suptitle()


def test_a_run_without_unstructured_pruning_reports_no_sparsity():
    metrics = CompressionMetrics(baseline=_metrics(1.0), compressed=_metrics(1.0), size_ratio=1.0, speedup=1.0,
                                 accuracy_delta=0.0)
    assert metrics.sparsity is None and "sparsity" not in metrics.to_json()


def test_zeros_are_faster_only_beyond_the_margin_of_a_quiet_machine():
    tensors = {"w": torch.tensor([[0.0, 1.0], [0.0, 0.0]]), "b": torch.zeros(2)}  # biases do not count
    dense = _metrics(1.0)
    for throughput, faster in ((900.0 * (1 + SPARSE_SPEEDUP_MARGIN) + 1, True), (905.0, False)):
        pruned = ModelMetrics(**{**dense.model_dump(), "throughput": throughput})
        found = sparsity_metrics("prune/unstructured", tensors, packed_size_bytes=10, pruned=pruned, dense=dense)
        assert (found.faster, found.zero_fraction, found.dense_size_bytes) == (faster, 0.75, 24)
        assert found.statement.startswith("faster" if faster else "not faster (dense kernels)")


def _metrics(latency_ms: float) -> ModelMetrics:
    return ModelMetrics(size_bytes=40_000, parameters=10_000, latency_p50_ms=latency_ms, throughput=900.0, metric=0.97,
                        metric_name="accuracy")


def _speed(median_ms: float, spread: float) -> Speed:
    return Speed(Figure(median_ms, median_ms * (1 - spread / 2), median_ms * (1 + spread / 2), 9), Figure(900.0, 890.0, 910.0, 9))


def test_an_unsteady_measurement_is_flagged_in_the_report_and_the_table():
    metrics = CompressionMetrics(baseline=_metrics(2.0), compressed=_metrics(0.5), size_ratio=1.0, speedup=1.0,
                                 accuracy_delta=0.0, steps=[StepResult(step="prune/structured", metrics=_metrics(0.5))])
    candidates = [Candidate("baseline", "fp32", 0.97, 40_000, 10_000, _speed(2.0, 0.9), accepted=True),
                  Candidate("prune/structured", "amount 0.5", 0.97, 20_000, 5_000, _speed(0.5, 0.1), accepted=True)]
    warning = "speed figures not to be trusted: baseline latency 90%"
    report = json.loads(report_json(metrics, candidates, max_drop=0.01, source="builtin://x", speed_warning=warning))
    assert {k: report["speed"][k] for k in ("trusted", "warning", "maxTrustedSpread")} == {
        "trusted": False, "warning": warning, "maxTrustedSpread": MAX_TRUSTED_SPREAD
    }
    table = _render(metrics_table("x", metrics, report))
    assert "2.000 ±45%" in table and "0.500 ±5%" in table
    assert f"WARNING: {warning}" in " ".join(table.split())


def _tick_labels(figure, drawn: bool = False) -> list[Text]:
    """Every tick label of the figure's axes, or the ones drawn: labelled, and inside the view."""
    labels = []
    for ax in figure.axes:
        for axis, view in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                shown = tick.label1.get_visible() and tick.label1.get_text() and min(view) <= tick.get_loc() <= max(view)
                if shown or not drawn:
                    labels.append(tick.label1)
    return labels


def test_no_two_texts_of_the_picture_overlap():
    # A budget search whose candidates lie close together: their labels would sit on top of each other.
    candidates = [Candidate("baseline", "fp32", 0.975, 120_000, 30_000, _speed(0.50, 0.05), accepted=True)]
    for index, amount in enumerate((0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4)):
        candidates.append(Candidate(
            "prune/structured", f"amount {amount:g}", 0.955 + index * 0.002, 60_000 + index * 800, 15_000,
            _speed(0.20 + index * 0.004, 0.1), accepted=amount == 0.4,
        ))
    candidates.append(Candidate("quantize/int8-static", "int8-static, 0 layer(s) float", 0.968, 16_000, 15_000,
                                _speed(0.16, 0.3), accepted=True))
    final = _metrics(0.16)
    metrics = CompressionMetrics(baseline=_metrics(0.5), compressed=final, size_ratio=7.5, speedup=3.1,
                                 accuracy_delta=-0.007, steps=[StepResult(step="quantize/int8-static", metrics=final)])
    figure = report_figure(metrics, candidates, max_drop=0.01, speed_warning="unsteady")
    renderer = figure.canvas.get_renderer()
    texts = [t for t in figure.findobj(Text) if t.get_visible() and t.get_text().strip() and t not in _tick_labels(figure)]
    texts += list(_tick_labels(figure, drawn=True))
    labels = [t for t in texts if t.get_text().startswith(("baseline:", "prune/", "quantize/"))]
    assert len(labels) == 2 * len(candidates)  # every candidate labelled, on both plots
    # Every text against every other: point labels, legend, titles, axis and tick labels.
    overlapping = [
        (a.get_text(), b.get_text()) for a, b in combinations(texts, 2) if text_box(a, renderer).overlaps(text_box(b, renderer))
    ]
    assert overlapping == []
    for label in labels:  # and each label stays within its plot
        inside = label.axes.get_window_extent(renderer)
        box = text_box(label, renderer)
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, label.get_text()
