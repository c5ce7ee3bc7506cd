"""The metrics table `slimserve run` prints after a compression: baseline against compressed, per step."""

from __future__ import annotations

from rich.table import Table

from slimserve.api.compression_job import CompressionMetrics, ModelMetrics


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.2f} MB" if num_bytes >= 1e5 else f"{num_bytes / 1e3:.1f} kB"


def _row(label: str, m: ModelMetrics) -> list[str]:
    return [label, _size(m.size_bytes), f"{m.parameters:,}", f"{m.latency_p50_ms:.3f}", f"{m.throughput:,.0f}", f"{m.metric:.4f}"]


def _latency_change(before_ms: float, after_ms: float) -> str:
    ratio = before_ms / max(after_ms, 1e-9)
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def metrics_table(title: str, metrics: CompressionMetrics) -> Table:
    name = metrics.baseline.metric_name or "metric"
    table = Table(title=title, title_justify="left")
    for header, justify in (("model", "left"), ("size", "right"), ("parameters", "right"),
                            ("p50 ms (batch 1)", "right"), ("samples/s (batch 32)", "right"), (name, "right")):
        table.add_column(header, justify=justify)
    table.add_row(*_row("baseline (fp32)", metrics.baseline))
    for step in metrics.steps:
        table.add_row(*_row(f"after {step.step}", step.metrics))
    base, comp = metrics.baseline, metrics.compressed
    table.add_section()
    table.add_row(
        "compressed vs baseline",
        f"{metrics.size_ratio:.2f}x smaller",
        f"{base.parameters / max(comp.parameters, 1):.2f}x fewer",
        _latency_change(base.latency_p50_ms, comp.latency_p50_ms),
        f"{metrics.speedup:.2f}x",
        f"{metrics.accuracy_delta:+.4f}",
    )
    return table
