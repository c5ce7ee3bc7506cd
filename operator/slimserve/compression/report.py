"""`report.json` and `report.png`: the baseline, every candidate the steps tried, and the final model."""

from __future__ import annotations

import io
import json
from typing import Any

from slimserve.api.compression_job import CompressionMetrics
from slimserve.compression.state import Candidate


def report_json(metrics: CompressionMetrics, candidates: list[Candidate], *, max_drop: float, source: str) -> bytes:
    payload: dict[str, Any] = {
        "source": source,
        "maxDrop": max_drop,
        "metrics": metrics.to_json(),
        "candidates": [c.as_json() for c in candidates],
        "notes": "candidates are scored as served; their latencies are short batch-1 measurements",
    }
    return json.dumps(payload, indent=2).encode()


def report_png(metrics: CompressionMetrics, candidates: list[Candidate], *, max_drop: float) -> bytes:
    """Metric against size and against latency; the budget as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    baseline, final = metrics.baseline, metrics.compressed
    figure, (by_size, by_latency) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for axis, x_of, x_label in (
        (by_size, lambda c: c.size_bytes / 1024.0, "weights size (KiB, log)"),
        (by_latency, lambda c: c.latency_ms, "latency p50 at batch 1 (ms, log)"),
    ):
        for candidate in candidates:
            style = {"color": "tab:green" if candidate.accepted else "tab:red", "marker": "o"}
            if candidate.step == "baseline":
                style = {"color": "black", "marker": "s"}
            axis.scatter([x_of(candidate)], [candidate.metric], s=36, **style, alpha=0.8)
            axis.annotate(f"{candidate.step}: {candidate.label}", (x_of(candidate), candidate.metric), fontsize=6,
                          xytext=(3, 3), textcoords="offset points")
        final_x = final.size_bytes / 1024.0 if axis is by_size else final.latency_p50_ms
        axis.scatter([final_x], [final.metric], s=120, marker="*", color="tab:blue", label="compressed, as served")
        axis.axhline(baseline.metric - max_drop, linestyle="--", color="gray", linewidth=1, label="accuracy budget")
        axis.set_xscale("log")
        axis.set_xlabel(x_label)
        axis.set_ylabel(baseline.metric_name or "metric")
        axis.grid(True, alpha=0.3)
    by_size.legend(fontsize=7, loc="lower right")
    figure.suptitle(
        f"{metrics.size_ratio:.2f}x smaller, {metrics.speedup:.2f}x throughput, "
        f"{baseline.metric_name} {baseline.metric:.4f} -> {final.metric:.4f} (green: kept, red: over budget)",
        fontsize=9,
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
