"""The metrics table `slimserve run` prints after a compression: baseline against compressed, per step,
with how far the speed figures spread over the measurement rounds (from the artifact's report.json)."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from slimserve.api.compression_job import CompressionMetrics, ModelMetrics, SparsityMetrics


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.2f} MB" if num_bytes >= 1e5 else f"{num_bytes / 1e3:.1f} kB"


def _row(label: str, m: ModelMetrics, speed: dict[str, Any] | None, generative: bool) -> list[str]:
    latency, throughput = f"{m.latency_p50_ms:.3f}", f"{m.throughput:,.0f}"
    if speed is not None:
        latency += f" ±{speed['latencySpread'] / 2:.0%}"
        throughput += f" ±{speed['throughputSpread'] / 2:.0%}"
    tokens = [f"{m.tokens_per_second:,.1f}"] if generative else []
    return [label, _size(m.size_bytes), f"{m.parameters:,}", latency, throughput, *tokens, f"{m.metric:.4f}"]


def _latency_change(before_ms: float, after_ms: float) -> str:
    ratio = before_ms / max(after_ms, 1e-9)
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def metrics_table(title: str, metrics: CompressionMetrics, report: dict[str, Any] | None = None) -> Table:
    """`report`: the artifact's report.json; its kept candidates (the table's rows) give the spreads."""
    name = metrics.baseline.metric_name or "metric"
    kept = [c for c in (report or {}).get("candidates", []) if c.get("accepted") and "latencySpread" in c]
    speeds = kept if len(kept) == len(metrics.steps) + 1 else [None] * (len(metrics.steps) + 1)
    base, comp = metrics.baseline, metrics.compressed
    generative = base.tokens_per_second is not None  # a decoder: its generation speed is a column of its own
    caption = _caption(report, speeds[0], metrics.sparsity)
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    tokens_column = [("tokens/s (1 sequence)", "right")] if generative else []
    for header, justify in (("model", "left"), ("size", "right"), ("parameters", "right"),
                            ("p50 ms (batch 1)", "right"), ("samples/s (batch 32)", "right"), *tokens_column, (name, "right")):
        table.add_column(header, justify=justify)
    table.add_row(*_row("baseline (fp32)", base, speeds[0], generative))
    for step, speed in zip(metrics.steps, speeds[1:]):
        table.add_row(*_row(f"after {step.step}", step.metrics, speed, generative))
    tokens_change = [f"{comp.tokens_per_second / max(base.tokens_per_second, 1e-9):.2f}x"] if generative else []
    metric_change = f"{metrics.accuracy_delta:+.4f}"
    if name == "perplexity":  # lower is better; its budget is a relative increase
        metric_change += f" ({comp.metric / base.metric - 1:+.2%})"
    table.add_section()
    table.add_row(
        "compressed vs baseline",
        f"{metrics.size_ratio:.2f}x smaller",
        f"{base.parameters / max(comp.parameters, 1):.2f}x fewer",
        _latency_change(base.latency_p50_ms, comp.latency_p50_ms),
        f"{metrics.speedup:.2f}x",
        *tokens_change,
        metric_change,
    )
    return table


def _caption(report: dict[str, Any] | None, speed: dict[str, Any] | None, sparsity: SparsityMetrics | None) -> Text | None:
    if speed is None:
        return None
    caption = Text(f"±: half the interquartile range of {speed['rounds']} rounds alternating the models, over the median")
    if sparsity is not None:
        caption.append(f"\n{sparsity.step} left {sparsity.zero_fraction:.0%} of the weights zero: {sparsity.statement}")
    warning = report.get("speed", {}).get("warning")
    if warning:
        caption.append(f"\nWARNING: {warning}", style="bold red")
    return caption
