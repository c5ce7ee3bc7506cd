"""`report.json` and `report.png`: the baseline, every candidate the steps tried, and the final model."""

from __future__ import annotations

import io
import json
import os
from typing import TYPE_CHECKING, Any

from slimserve.api.compression_job import CompressionMetrics
from slimserve.compression.measure import MAX_TRUSTED_SPREAD
from slimserve.compression.state import Candidate

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.text import Annotation, Text

LABEL_GAP_PX = 4.0  # free space kept between two point labels
MARKER_RADIUS_PT = 6.0  # room a label leaves around each plotted point
LABEL_TRIES = 24  # heights tried per label before it takes the least crowded place


def report_json(
    metrics: CompressionMetrics,
    candidates: list[Candidate],
    *,
    max_drop: float,
    source: str,
    speed_warning: str | None = None,
    resumed_from: str | None = None,
) -> bytes:
    payload: dict[str, Any] = {
        "source": source,
        "maxRelativeIncrease" if metrics.baseline.metric_name == "perplexity" else "maxDrop": max_drop,
        "withinBudget": metrics.within_budget,
        # set when the run continued from a checkpoint: the last step it restored instead of running again
        "resumedFrom": resumed_from,
        "metrics": metrics.to_json(),
        "candidates": [c.as_json() for c in candidates],
        "speed": {
            "trusted": speed_warning is None,
            "warning": speed_warning,
            "maxTrustedSpread": MAX_TRUSTED_SPREAD,
            # spinning OpenMP threads (the default) slow whichever model runs next: PASSIVE is the fair setting
            "ompWaitPolicy": os.environ.get("OMP_WAIT_POLICY"),
        },
        "notes": (
            "candidates are scored as served; speeds are medians of rounds that alternate the original with the "
            "candidates (the kept ones: the figures in metrics), spreads the interquartile range of the rounds "
            "over the median"
        ),
    }
    return json.dumps(payload, indent=2).encode()


def report_figure(
    metrics: CompressionMetrics, candidates: list[Candidate], *, max_drop: float, speed_warning: str | None = None
) -> "Figure":
    """Metric against size and against latency (quartiles as error bars); the budget as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    baseline, final = metrics.baseline, metrics.compressed
    figure, (by_size, by_latency) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    labels: dict[Any, list[Annotation]] = {by_size: [], by_latency: []}
    # what labels keep off: each marker with its error bar, as (x from, x to, y) in data coordinates
    points: dict[Any, list[tuple[float, float, float]]] = {by_size: [], by_latency: []}
    for axis in (by_size, by_latency):
        for candidate in candidates:
            if axis is by_size:
                x, x_error, x_range = candidate.size_bytes / 1024.0, None, (candidate.size_bytes / 1024.0,) * 2
            elif candidate.speed is not None:
                latency = candidate.speed.latency_ms
                x, x_error = latency.median, [[latency.median - latency.low], [latency.high - latency.median]]
                x_range = (latency.low, latency.high)
            else:
                continue
            color, marker = ("black", "s") if candidate.step == "baseline" else ("tab:green" if candidate.accepted else "tab:red", "o")
            axis.errorbar([x], [candidate.metric], xerr=x_error, fmt=marker, color=color, markersize=6, alpha=0.8,
                          elinewidth=0.8, capsize=2)
            label = axis.annotate(
                f"{candidate.step}: {candidate.label}", (x, candidate.metric), xytext=(0, 0), textcoords="offset points",
                fontsize=6, va="center", arrowprops={"arrowstyle": "-", "linewidth": 0.4, "color": "gray", "shrinkB": 4},
            )
            label.set_in_layout(False)
            labels[axis].append(label)
            points[axis].append((*x_range, candidate.metric))
        final_x = final.size_bytes / 1024.0 if axis is by_size else final.latency_p50_ms
        points[axis].append((final_x, final_x, final.metric))
        axis.scatter([final_x], [final.metric], s=120, marker="*", color="tab:blue", label="compressed, as served", zorder=3)
        # a lower-is-better metric's budget (perplexity) is a relative increase: its line is above the baseline
        budget = baseline.metric * (1 + max_drop) if baseline.metric_name == "perplexity" else baseline.metric - max_drop
        axis.axhline(budget, linestyle="--", color="gray", linewidth=1, label="accuracy budget")
        axis.set_xscale("log")
        # 1-2-5 ticks with plain numbers: log-scale minor labels (3x10^1, 4x10^1) run into each other.
        axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.margins(x=0.15, y=0.15)
        axis.set_ylabel(baseline.metric_name or "metric")
        axis.grid(True, alpha=0.3)
    by_size.set_xlabel("weights size (KiB, log)")
    by_latency.set_xlabel("latency p50 at batch 1 (ms, log; bars: quartiles of the rounds)")
    figure.legend(*by_size.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=7)
    title = (
        f"{metrics.size_ratio:.2f}x smaller, {metrics.speedup:.2f}x throughput, "
        f"{baseline.metric_name} {baseline.metric:.4f} -> {final.metric:.4f} (green: kept, red: over budget)"
    )
    if metrics.sparsity is not None:
        title += f"\n{metrics.sparsity.step}, {metrics.sparsity.zero_fraction:.0%} zeros: {metrics.sparsity.statement}"
    if speed_warning:
        title += f"\nspeeds NOT to be trusted: rounds spread more than {MAX_TRUSTED_SPREAD:.0%} (a busy machine)"
    figure.suptitle(title, fontsize=9, color="black" if not speed_warning else "tab:red")
    figure.canvas.draw()  # the layout settles here; labels are placed on the final positions
    figure.set_layout_engine("none")
    for axis, axis_labels in labels.items():
        _place_without_overlap(figure, axis, axis_labels, points[axis])
    return figure


def report_png(
    metrics: CompressionMetrics, candidates: list[Candidate], *, max_drop: float, speed_warning: str | None = None
) -> bytes:
    from matplotlib import pyplot as plt

    figure = report_figure(metrics, candidates, max_drop=max_drop, speed_warning=speed_warning)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=figure.dpi)  # the dpi labels were placed at
    plt.close(figure)
    return buffer.getvalue()


def text_box(label: "Text", renderer):
    """The window extent of a label's text alone (an Annotation's own extent includes its leader line)."""
    from matplotlib.text import Text

    return Text.get_window_extent(label, renderer)


def _place_without_overlap(
    figure: "Figure", axis, labels: list["Annotation"], points: list[tuple[float, float, float]]
) -> None:
    """Move each point label beside its marker and error bar, right or left, then up or down, to the nearest
    place where it overlaps no marker, no bar and no label placed before, inside the axes (the least crowded
    place if there is none). `points[i]` is label i's (x from, x to, y); more points are markers only."""
    from matplotlib.transforms import Bbox

    renderer = figure.canvas.get_renderer()
    inside = axis.get_window_extent(renderer)
    pt = figure.dpi / 72.0  # pixels per point
    markers = [Bbox(axis.transData.transform([(x0, y), (x1, y)])).padded(MARKER_RADIUS_PT * pt) for x0, x1, y in points]
    placed = []
    for label, marker in sorted(zip(labels, markers), key=lambda pair: (pair[0].xy[1], pair[0].xy[0])):
        x = axis.transData.transform([label.xy])[0][0]
        step_pt = text_box(label, renderer).height / pt + LABEL_GAP_PX
        best, best_score = None, None
        for offset, align in _offsets(step_pt, right_pt=(marker.x1 - x) / pt, left_pt=(x - marker.x0) / pt):
            label.set_horizontalalignment(align)
            label.xyann = offset
            box = text_box(label, renderer)
            clashes = sum(box.padded(LABEL_GAP_PX).overlaps(other) for other in placed)
            clashes += sum(box.overlaps(other) for other in markers)
            outside = not (inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1)
            score = 2 * clashes + outside
            if best_score is None or score < best_score:
                best, best_score = (offset, align), score
            if score == 0:
                break
        label.xyann, align = best
        label.set_horizontalalignment(align)
        placed.append(text_box(label, renderer))


def _offsets(step_pt: float, *, right_pt: float, left_pt: float):
    """Label offsets (points) from its point, nearest first: just past its marker (and bar) on the right, then
    on the left, then higher and lower in half-label steps."""
    for k in range(LABEL_TRIES):
        for dy in ((0.0,) if k == 0 else (k * step_pt / 2, -k * step_pt / 2)):
            yield (right_pt + 1.0, dy), "left"
            yield (-left_pt - 1.0, dy), "right"
