"""The pod-side status sink's own logic, with the API replaced by a recorder (the cluster tests use the real one)."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from slimserve.api.compression_job import ArtifactRef, Progress
from slimserve.compression import status_sink
from slimserve.compression.status_sink import KubernetesStatusSink, StatusSinkError, parse_target


class FakeStatusApi:
    """Stands in for `update_status`: holds one CompressionJob and applies what `derive` returns."""

    def __init__(self, generation: int = 3, failures: int = 0):
        self.object = {"metadata": {"generation": generation, "resourceVersion": "1"}, "status": {}}
        self.patches: list[dict] = []
        self.failures = failures

    def update_status(self, api, plural, namespace, name, derive, **kwargs):
        assert (plural, namespace, name) == ("compressionjobs", "team-a", "digits")
        if self.failures:
            self.failures -= 1
            raise ApiException(status=503, reason="Service Unavailable")
        patch = derive(self.object)
        if patch is not None:
            self.patches.append(patch)
            self.object["status"].update(patch)
        return self.object, patch


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_api(monkeypatch) -> FakeStatusApi:
    fake = FakeStatusApi()
    monkeypatch.setattr(status_sink, "update_status", fake.update_status)
    return fake


def make_sink(clock=None, generation=3, interval=1.0) -> KubernetesStatusSink:
    return KubernetesStatusSink(
        "team-a/digits", generation, api=object(), min_interval_seconds=interval, clock=clock or Clock()
    )


def test_progress_is_throttled_and_the_latest_held_back_event_is_written_on_close(fake_api):
    clock = Clock()
    sink = make_sink(clock, interval=60)  # a long interval: the trailing timer does not fire during the test
    sink.progress(Progress(step="prune/structured", step_index=0, steps_total=3, fraction=0.1))
    sink.progress({"step": "prune/structured", "fraction": 0.2})
    sink.progress({"step": "distill", "step_index": 1, "fraction": 0.4, "message": "epoch 1"})
    assert [p["progress"]["fraction"] for p in fake_api.patches] == [0.1]
    sink.close()
    assert fake_api.patches[-1]["progress"] == {
        "step": "distill", "stepIndex": 1, "stepsTotal": 0, "fraction": 0.4, "message": "epoch 1",
    }
    clock.now += 61
    sink.progress({"step": "quantize", "fraction": 0.9})
    assert len(fake_api.patches) == 3  # past the interval: written at once


def test_the_interval_runs_from_the_end_of_a_slow_write(fake_api, monkeypatch):
    clock = Clock()

    def slow_write(*args, **kwargs):
        clock.now += 2  # the API server took longer than the interval
        return fake_api.update_status(*args, **kwargs)

    monkeypatch.setattr(status_sink, "update_status", slow_write)
    sink = make_sink(clock, interval=1)
    sink.progress({"fraction": 0.1})
    sink.progress({"fraction": 0.2})  # right after the slow write ended: held back
    assert [p["progress"]["fraction"] for p in fake_api.patches] == [0.1]
    sink.close()
    clock.now += 1
    sink.progress({"fraction": 0.3})  # an interval after the end of the last write: written at once
    assert [p["progress"]["fraction"] for p in fake_api.patches] == [0.1, 0.2, 0.3]


def test_result_writes_artifact_metrics_and_full_progress_at_once(fake_api):
    sink = make_sink(interval=60)
    sink.progress({"step": "quantize", "fraction": 0.1})
    sink.progress({"step": "evaluate", "fraction": 0.8})  # held back, superseded by the result
    artifact = ArtifactRef(uri="pvc://artifacts/x", digest="sha256:ab", size_bytes=10)
    measured = {"size_bytes": 10, "parameters": 5, "latency_p50_ms": 1.0, "throughput": 2.0, "metric": 0.9}
    metrics = {"baseline": measured, "compressed": measured, "size_ratio": 1.0, "speedup": 1.0, "accuracy_delta": 0.0}
    sink.result({"artifact": artifact, "metrics": metrics})
    written = fake_api.patches[-1]
    assert written["artifact"] == {"uri": "pvc://artifacts/x", "digest": "sha256:ab", "sizeBytes": 10, "format": "slimserve/v1"}
    assert written["metrics"]["sizeRatio"] == 1.0 and written["metrics"]["baseline"]["latencyP50Ms"] == 1.0
    assert written["progress"]["fraction"] == 1.0 and written["progress"]["step"] == "evaluate"
    sink.close()
    assert fake_api.patches[-1] is written  # nothing pending any more


def test_a_result_that_cannot_be_written_raises_but_progress_never_does(monkeypatch):
    fake = FakeStatusApi(failures=2)
    monkeypatch.setattr(status_sink, "update_status", fake.update_status)
    sink = make_sink(interval=0)
    sink.progress({"fraction": 0.5})  # logged, not raised
    with pytest.raises(StatusSinkError, match="503"):
        sink.result({"artifact": {"uri": "s3://b/x", "digest": "sha256:ab", "sizeBytes": 1}, "metrics": {
            "baseline": {"sizeBytes": 1, "parameters": 1, "latencyP50Ms": 1, "throughput": 1, "metric": 1},
            "compressed": {"sizeBytes": 1, "parameters": 1, "latencyP50Ms": 1, "throughput": 1, "metric": 1},
            "sizeRatio": 1, "speedup": 1, "accuracyDelta": 0}})


def test_error_records_the_reason_in_the_progress_message(fake_api):
    sink = make_sink(interval=0)
    sink.progress({"step": "evaluate", "fraction": 0.9})
    sink.error("BudgetExceeded", "accuracy fell 3.1 points, budget 1.0")
    assert fake_api.patches[-1]["progress"]["message"] == "BudgetExceeded: accuracy fell 3.1 points, budget 1.0"
    assert fake_api.patches[-1]["progress"]["fraction"] == 0.9


def test_a_stale_generation_never_writes(fake_api):
    sink = make_sink(generation=2, interval=0)
    sink.progress({"fraction": 0.5})
    sink.error("Failed", "boom")
    assert fake_api.patches == [] and sink.stale


def test_result_without_an_artifact_is_refused(fake_api):
    with pytest.raises(ValueError, match="no artifact"):
        make_sink().result({"metrics": {}})


@pytest.mark.parametrize("target", ["", "digits", "team-a/", "/digits", "a/b/c", "Team/digits"])
def test_target_must_be_namespace_slash_name(target):
    with pytest.raises(ValueError, match="--status-target: expected NAMESPACE/NAME"):
        parse_target(target)


def test_for_target_takes_the_generation_from_the_environment(fake_api):
    sink = KubernetesStatusSink.for_target("team-a/digits", {"SLIMSERVE_JOB_GENERATION": "7"}, api=object())
    assert (sink.namespace, sink.name, sink.generation) == ("team-a", "digits", 7)
    with pytest.raises(ValueError, match="SLIMSERVE_JOB_GENERATION"):
        KubernetesStatusSink.for_target("team-a/digits", {"SLIMSERVE_JOB_GENERATION": "x"}, api=object())


def test_without_a_generation_the_first_write_adopts_the_current_one(fake_api):
    sink = KubernetesStatusSink.for_target("team-a/digits", {}, api=object(), min_interval_seconds=0)
    sink.progress({"fraction": 0.1})
    assert sink.generation == 3 and len(fake_api.patches) == 1
