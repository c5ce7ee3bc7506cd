"""Progress sinks: JSON lines in the status's camelCase shape, a rich bar, and overall fractions that never go back."""

from __future__ import annotations

import io
import json

from slimserve.api.compression_job import ArtifactRef, CompressionMetrics, ModelMetrics
from slimserve.compression.progress import CompressionOutcome, JsonLinesSink, ProgressSink, Reporter, RichProgressSink


def _outcome() -> CompressionOutcome:
    base = ModelMetrics(size_bytes=400, parameters=100, latency_p50_ms=2.0, throughput=100.0, metric=0.98, metric_name="accuracy")
    small = base.model_copy(update={"size_bytes": 40, "throughput": 300.0, "metric": 0.975})
    metrics = CompressionMetrics(baseline=base, compressed=small, size_ratio=10.0, speedup=3.0, accuracy_delta=-0.005)
    return CompressionOutcome(ArtifactRef(uri="file:///tmp/a", digest="sha256:" + "a" * 64, size_bytes=500), metrics)


def test_reporter_maps_spans_into_monotonic_overall_fractions():
    stream = io.StringIO()
    sink = JsonLinesSink(stream)
    assert isinstance(sink, ProgressSink)
    now = [0.0]
    reporter = Reporter([sink], steps_total=4, clock=lambda: now[0])
    now[0] = 10.0  # loading took 10 s
    reporter.begin(1, "prune/structured")
    now[0] = 20.0
    reporter.span(0.0, 0.5)
    reporter.update(1.0, "first candidate done")
    reporter.span(0.5, 0.75)
    reporter.update(0.0, "second candidate starts")  # must not move the bar back
    now[0] = 25.0
    reporter.update(1.0, "second candidate done")
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["fraction"] for e in events] == [0.25, 0.375, 0.375, 0.4375]
    assert "etaSeconds" not in events[0] or events[0]["stepFraction"] == 0.0
    # 3/4 of the step in 15 s: 5 s left of it; 0.4375 of the run in 25 s: 32.1 s left of the run.
    assert events[-1] == {"event": "progress", "step": "prune/structured", "stepIndex": 1, "stepsTotal": 4,
                          "fraction": 0.4375, "message": "second candidate done", "stepFraction": 0.75,
                          "stepEtaSeconds": 5.0, "etaSeconds": 32.1}


def test_reporter_after_a_resume_counts_restored_steps_as_done_and_says_so():
    stream = io.StringIO()
    now = [0.0]
    reporter = Reporter([JsonLinesSink(stream)], steps_total=4, clock=lambda: now[0])
    reporter.begin(0, "load")
    reporter.resume(2, "spec.steps[0] prune/structured")
    reporter.begin(2, "quantize/int8-dynamic")
    now[0] = 10.0
    reporter.update(0.5, "half way")
    event = json.loads(stream.getvalue().splitlines()[-1])
    # 1/8 of the run in the 10 s since the resume (the restored half is not time spent): 30 s left.
    assert event["fraction"] == 0.625 and event["etaSeconds"] == 30.0 and event["stepEtaSeconds"] == 10.0
    assert event["resumedFrom"] == "spec.steps[0] prune/structured"


def test_json_lines_result_and_error_events():
    stream = io.StringIO()
    sink = JsonLinesSink(stream)
    outcome = _outcome()
    sink.result(outcome)
    sink.error("InvalidSpec", "spec.steps[0].prune.amount: too large")
    result, error = (json.loads(line) for line in stream.getvalue().splitlines())
    assert result == {"event": "result", "artifact": outcome.artifact.to_json(), "metrics": outcome.metrics.to_json()}
    assert result["metrics"]["sizeRatio"] == 10.0 and result["artifact"]["sizeBytes"] == 500
    assert error == {"event": "error", "reason": "InvalidSpec", "message": "spec.steps[0].prune.amount: too large"}


def test_rich_bar_summarises_the_result():
    stream = io.StringIO()
    sink = RichProgressSink(stream)
    Reporter([sink], steps_total=2).begin(0, "load", "loading")
    sink.result(_outcome())
    sink.close()
    text = " ".join(stream.getvalue().split())  # the console wraps long lines
    assert "10.00x smaller" in text and "3.00x throughput" in text and "accuracy 0.9800 -> 0.9750" in text


def test_terminal_bar_shows_the_time_left_and_where_the_run_resumed():
    from slimserve.api.compression_job import Progress
    from slimserve.compression.progress import eta_text

    event = Progress(step="quantize/int8-dynamic", step_index=2, steps_total=4, fraction=0.6, step_eta_seconds=12.4,
                     eta_seconds=3700.0, resumed_from="spec.steps[0] prune/structured")
    assert eta_text(event) == "step 0:12 left, run 1:01:40 left, resumed after spec.steps[0] prune/structured"
    assert eta_text(Progress(step="load")) == ""
    stream = io.StringIO()
    sink = RichProgressSink(stream)
    sink.progress(event)
    sink.close()
    assert "run 1:01:40 left" in " ".join(stream.getvalue().split())
