"""Progress of a compression run, sent to sinks: JSON lines on stdout, a rich bar on a terminal, or others.

A sink implements `ProgressSink`: `progress(event)` for each `Progress` event, `result(outcome)` once at the
end of a successful run (the outcome carries `artifact` and `metrics`, the CompressionJob status models),
`error(reason, message)` when the run fails. `close()` is optional and called last.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Protocol, runtime_checkable

from slimserve.api.compression_job import ArtifactRef, CompressionMetrics, Progress


@dataclass(frozen=True)
class CompressionOutcome:
    """What a successful run produced: the status's `artifact` and `metrics`."""

    artifact: ArtifactRef
    metrics: CompressionMetrics


@runtime_checkable
class ProgressSink(Protocol):
    def progress(self, event: Progress) -> None: ...

    def result(self, result: CompressionOutcome) -> None: ...

    def error(self, reason: str, message: str) -> None: ...


class JsonLinesSink:
    """One JSON object per line: `{"event": "progress", ...}`, then `{"event": "result", "artifact", "metrics"}`
    or `{"event": "error", "reason", "message"}` (camelCase, the status's JSON shape)."""

    def __init__(self, stream: IO[str] | None = None):
        self._stream = stream or sys.stdout

    def progress(self, event: Progress) -> None:
        self._emit({"event": "progress", **event.to_json()})

    def result(self, result: CompressionOutcome) -> None:
        self._emit({"event": "result", "artifact": result.artifact.to_json(), "metrics": result.metrics.to_json()})

    def error(self, reason: str, message: str) -> None:
        self._emit({"event": "error", "reason": reason, "message": message})

    def _emit(self, payload: dict[str, Any]) -> None:
        self._stream.write(json.dumps(payload, separators=(",", ":")) + "\n")
        self._stream.flush()


class RichProgressSink:
    """A progress bar for people at a terminal (written to stderr, so stdout stays machine-readable)."""

    def __init__(self, stream: IO[str] | None = None):
        from rich.console import Console
        from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeElapsedColumn

        self._console = Console(file=stream or sys.stderr)
        self._bar = Bar(
            TextColumn("[bold]{task.fields[step]}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), TextColumn("{task.description}"),
            console=self._console, transient=False,
        )
        self._task = self._bar.add_task("", total=1.0, step="", eta="")
        self._bar.start()

    def progress(self, event: Progress) -> None:
        self._bar.update(self._task, completed=event.fraction, description=event.message, step=event.step, eta=eta_text(event))

    def result(self, result: CompressionOutcome) -> None:
        self._bar.update(self._task, completed=1.0, description="done")
        self.close()
        metrics = result.metrics
        self._console.print(
            f"[green]artifact[/] {result.artifact.uri} ({result.artifact.digest[:19]}...): "
            f"{metrics.size_ratio:.2f}x smaller, {metrics.speedup:.2f}x throughput, "
            f"{metrics.compressed.metric_name} {metrics.baseline.metric:.4f} -> {metrics.compressed.metric:.4f}"
        )

    def error(self, reason: str, message: str) -> None:
        self.close()
        self._console.print(f"[red]{reason}[/]: {message}")

    def close(self) -> None:
        if self._bar.live.is_started:
            self._bar.stop()


def eta_text(event: Progress) -> str:
    """`step 0:12 left, run 1:40 left` (the parts known so far), and where the run resumed."""
    parts = [f"{what} {_clock_text(seconds)} left" for what, seconds in (("step", event.step_eta_seconds), ("run", event.eta_seconds)) if seconds is not None]
    if event.resumed_from:
        parts.append(f"resumed after {event.resumed_from}")
    return ", ".join(parts)


def _clock_text(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


class Reporter:
    """Fans events out to sinks and turns (step index, fraction within the step) into overall progress, with
    estimates of the time left: the step's from its own progress, the run's from the overall progress of
    this process (steps resumed from a checkpoint count as done, not as time spent)."""

    def __init__(self, sinks: list[ProgressSink], steps_total: int, clock: Callable[[], float] = time.monotonic):
        self.sinks = sinks
        self.steps_total = max(1, steps_total)
        self.step = ""
        self.step_index = 0
        self.resumed_from: str | None = None
        self._clock = clock
        self._span = (0.0, 1.0)
        self._fraction = 0.0
        self._step_fraction = 0.0
        self._started = clock()
        self._start_fraction = 0.0
        self._step_started = self._started

    def begin(self, step_index: int, step: str, message: str = "") -> None:
        self.step_index, self.step, self._span = step_index, step, (0.0, 1.0)
        self._step_started, self._step_fraction = self._clock(), 0.0
        self.update(0.0, message or f"{step}: started")

    def resume(self, step_index: int, resumed_from: str) -> None:
        """The steps before `step_index` were restored from a checkpoint: progress starts after them."""
        self.resumed_from = resumed_from
        self._fraction = self._start_fraction = min(step_index / self.steps_total, 1.0)
        self._started = self._clock()

    def span(self, start: float, end: float) -> None:
        """Map later `update` fractions (0..1) into [start, end] of the step, e.g. one candidate of a search."""
        self._span = (start, end)

    def update(self, within_step: float, message: str) -> None:
        start, end = self._span
        within = start + (end - start) * min(max(within_step, 0.0), 1.0)
        # Never backwards: a retried candidate restarts its own span, not the bar.
        self._fraction = max(self._fraction, min((self.step_index + within) / self.steps_total, 1.0))
        self._step_fraction = max(self._step_fraction, within)
        now = self._clock()
        event = Progress(
            step=self.step, step_index=self.step_index, steps_total=self.steps_total,
            fraction=round(self._fraction, 4), message=message, step_fraction=round(self._step_fraction, 4),
            step_eta_seconds=_eta(now - self._step_started, self._step_fraction),
            eta_seconds=_eta(now - self._started, self._fraction - self._start_fraction, 1.0 - self._fraction),
            resumed_from=self.resumed_from,
        )
        for sink in self.sinks:
            sink.progress(event)

    def result(self, outcome: CompressionOutcome) -> None:
        for sink in self.sinks:
            sink.result(outcome)

    def error(self, reason: str, message: str) -> None:
        for sink in self.sinks:
            sink.error(reason, message)

    def close(self) -> None:
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()


def _eta(elapsed: float, done: float, left: float | None = None) -> float | None:
    """Seconds left at the pace so far (`done` of the work took `elapsed`); None until there is a pace."""
    left = 1.0 - done if left is None else left
    if done <= 0.01 or elapsed <= 0.0:
        return None
    return round(elapsed * max(left, 0.0) / done, 1)
