"""The canary's automatic rollback as pure functions: what Prometheus' answer measures, the decision on its edge
cases, when a rollback holds, the condition a pass leaves, the Event, the settings refused, and which canaries the
evaluation loop judges."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError

from slimserve.api.model_service import CanaryRollbackSpec, CanarySpec, ModelServiceSpec
from slimserve.controller.builders.canary import ReplicaPlan, Side
from slimserve.controller.builders.model_service import ArtifactToServe, Owner
from slimserve.controller.canary_rollback import (
    CANARY_ROLLED_BACK,
    INFERENCE_ENDPOINTS,
    AnswerInvalid,
    Measurement,
    decide,
    error_rate_query,
    evaluation_interval,
    is_server_error,
    requests_by_code,
    rollback_conditions,
    rollback_holds,
    rollback_record,
)
from slimserve.controller.conditions import find_condition, set_condition
from slimserve.controller.model_service_canary import CanaryPass, keep_canary_status, targets
from slimserve.controller.model_service_canary_rollback import candidate_of
from slimserve.controller.model_service_events import transition_events
from slimserve.controller.model_service_state import Runtime, Snapshot
from slimserve.controller.model_service_status import inputs_for, resolve_model_uri
from slimserve.models.servable import ModelInfo, TensorSpec
from slimserve.serving.batching import Batcher, ModelCaller
from slimserve.serving.dataplane import DataPlane
from slimserve.serving.generation import add_generation_routes
from slimserve.serving.metrics import ServerMetrics
from slimserve.serving.model import ServedModel
from slimserve.serving.rest import build_app

URI = "builtin://digits-cnn"


def sample(code: str, value: str) -> dict:
    return {"metric": {"code": code}, "value": [1700000000.123, value]}


def rollback(max_error_percent: float = 5, window_seconds: int = 60, min_requests: int = 20) -> CanaryRollbackSpec:
    return CanaryRollbackSpec(max_error_percent=max_error_percent, window_seconds=window_seconds,
                              min_requests=min_requests)


@pytest.mark.parametrize("code", ["500", "502", "503", "504", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED",
                                  "UNKNOWN", "DATA_LOSS"])
def test_server_failures_are_errors(code):
    assert is_server_error(code)


@pytest.mark.parametrize("code", ["200", "400", "404", "408", "413", "429", "OK", "INVALID_ARGUMENT", "NOT_FOUND",
                                  "RESOURCE_EXHAUSTED", "UNAUTHENTICATED", "5", "5000", ""])
def test_answers_that_are_the_callers_are_not_errors(code):
    assert not is_server_error(code)


def test_the_answer_is_summed_by_code_and_samples_without_a_value_are_left_out():
    counts = requests_by_code([sample("200", "75.5"), sample("503", "24.5"), sample("429", "NaN"),
                               sample("UNAVAILABLE", "3")])
    assert counts == {"200": 75.5, "503": 24.5, "UNAVAILABLE": 3.0}
    measured = Measurement.of(counts)
    assert (measured.requests, measured.errors) == (103.0, 27.5)
    assert measured.error_percent == pytest.approx(100 * 27.5 / 103)


@pytest.mark.parametrize("result", [{"not": "a list"}, [{"metric": {}}], [{"value": [1, "x"], "metric": {}}], ["200"]])
def test_an_answer_that_is_not_a_vector_of_samples_is_refused(result):
    with pytest.raises(AnswerInvalid):
        requests_by_code(result)


def test_no_requests_at_all_is_too_few_to_judge():
    decision = decide(Measurement.of(requests_by_code([])), rollback(min_requests=1))
    assert not decision.roll_back
    assert (decision.verdict.status, decision.verdict.reason) == ("False", "TooFewRequests")


def test_fewer_than_min_requests_are_not_judged_however_many_failed():
    decision = decide(Measurement(requests=19.4, errors=19.4), rollback(min_requests=20))
    assert not decision.roll_back and decision.verdict.reason == "TooFewRequests"
    assert "19 canary requests" in decision.verdict.message


def test_an_estimate_that_rounds_to_min_requests_is_judged():
    # increase() extrapolates from the scrapes: 20 requests may read 19.6
    decision = decide(Measurement(requests=19.6, errors=19.6), rollback(min_requests=20))
    assert decision.roll_back and decision.verdict.reason == "ErrorRateExceeded"


def test_a_rate_equal_to_the_threshold_is_within_it_and_above_it_rolls_back():
    at = decide(Measurement(requests=100, errors=5), rollback(max_error_percent=5))
    assert not at.roll_back
    assert (at.verdict.status, at.verdict.reason) == ("False", "WithinThreshold")
    above = decide(Measurement(requests=100, errors=5.5), rollback(max_error_percent=5))
    assert above.roll_back
    assert above.verdict.status == "True"
    assert "5.5%" in above.verdict.message and "maxErrorPercent 5" in above.verdict.message


def test_a_threshold_of_zero_rolls_back_on_one_failure_and_not_without():
    assert decide(Measurement(requests=50, errors=1), rollback(max_error_percent=0, min_requests=1)).roll_back
    assert not decide(Measurement(requests=50, errors=0), rollback(max_error_percent=0, min_requests=1)).roll_back


def test_the_query_counts_the_canary_pods_inference_requests_by_code_joined_on_their_version():
    query = error_rate_query(Owner(name="digits", namespace="team-a", uid="u"), 45)
    assert query.startswith("sum by (code) (increase(slimserve_requests_total{")
    assert '[45s]' in query
    pods = 'namespace="team-a",pod=~"digits-canary-[a-z0-9]{1,10}-[a-z0-9]{5}"'
    assert f"slimserve_requests_total{{{pods}," in query
    assert 'endpoint=~"infer|generate|generate_stream|completions|chat_completions|ModelInfer"' in query
    assert query.endswith(f'slimserve_model_info{{{pods},model_version="canary"}})')
    assert "* on (namespace, pod) group_left ()" in query


def test_evaluations_run_every_quarter_window_within_bounds():
    assert [evaluation_interval(w) for w in (10, 60, 3600)] == [5.0, 15.0, 30.0]


def canary(percent: int = 20, uri: str = URI) -> CanarySpec:
    return CanarySpec(model={"uri": uri}, traffic_percent=percent, rollback=rollback())


def record(percent: int = 20, uri: str = URI, digest: str | None = None) -> dict:
    return rollback_record({"modelUri": uri, "modelDigest": digest}, percent, Measurement(80, 40), 60,
                           "2026-01-01T00:00:00Z")


def test_the_record_says_what_was_rolled_back_and_what_was_measured():
    assert record(digest="sha256:ab") == {"modelUri": URI, "modelDigest": "sha256:ab", "trafficPercent": 20,
                                          "errorPercent": 50.0, "requests": 80.0, "windowSeconds": 60,
                                          "time": "2026-01-01T00:00:00Z"}


def test_a_rollback_holds_while_the_spec_asks_for_the_same_candidate_at_the_same_percent():
    assert rollback_holds(record(), canary(), ArtifactToServe(URI))
    assert rollback_holds(record(), canary(), None)  # the candidate not resolved yet: the percent decides
    assert not rollback_holds(record(), canary(percent=30), ArtifactToServe(URI))
    assert not rollback_holds(record(), canary(uri="builtin://digits-mlp"), ArtifactToServe("builtin://digits-mlp"))
    # the same CompressionJob run again: another digest is another candidate
    assert not rollback_holds(record(digest="sha256:old"), canary(), ArtifactToServe(URI, "sha256:new"))
    assert not rollback_holds(record(), None, None)
    assert not rollback_holds(None, canary(), ArtifactToServe(URI))


def rolled_back_condition() -> list[dict]:
    return set_condition([], CANARY_ROLLED_BACK, "True", "ErrorRateExceeded", "40 of 80 failed", generation=3)


def test_a_pass_keeps_the_rollback_while_it_holds_then_says_the_canary_resumed():
    conditions = rolled_back_condition()
    assert rollback_conditions(conditions, canary(), record(), record(), 3) == conditions
    restored = find_condition(rollback_conditions([], canary(), record(), record(), 3), CANARY_ROLLED_BACK)
    assert (restored["status"], restored["reason"]) == ("True", "ErrorRateExceeded")
    resumed = find_condition(rollback_conditions(conditions, canary(percent=30), record(), None, 4), CANARY_ROLLED_BACK)
    assert (resumed["status"], resumed["reason"], resumed["observedGeneration"]) == ("False", "Resumed", 4)


def test_the_condition_goes_with_the_canary_or_with_its_rollback_settings():
    conditions = set_condition([], CANARY_ROLLED_BACK, "False", "WithinThreshold", "", generation=1)
    assert rollback_conditions(conditions, None, None, None, 2) == []
    without = CanarySpec(model={"uri": URI}, traffic_percent=20)
    assert rollback_conditions(conditions, without, None, None, 2) == []
    assert rollback_conditions(conditions, canary(), None, None, 2) == conditions  # evaluations own it


def test_a_rollback_is_a_warning_event_and_metrics_unavailable_too():
    before = {"conditions": set_condition([], CANARY_ROLLED_BACK, "False", "WithinThreshold", "0 of 40", generation=1)}
    after = {"conditions": rolled_back_condition()}
    (event,) = transition_events(before, after)
    assert (event.type, event.reason) == ("Warning", "ErrorRateExceeded")
    assert event.message == "CanaryRolledBack is true: 40 of 80 failed"
    unknown = {"conditions": set_condition([], CANARY_ROLLED_BACK, "Unknown", "MetricsUnavailable", "refused",
                                           generation=1)}
    (event,) = transition_events({}, unknown)
    assert (event.type, event.message) == ("Warning", "CanaryRolledBack is unknown: refused")
    first_evaluation = {"conditions": before["conditions"]}
    assert transition_events({}, first_evaluation) == []  # a first healthy evaluation is not news


@pytest.mark.parametrize("settings, field", [
    ({"maxErrorPercent": -1}, "maxErrorPercent"),
    ({"maxErrorPercent": 100}, "maxErrorPercent"),
    ({"maxErrorPercent": 5, "windowSeconds": 9}, "windowSeconds"),
    ({"maxErrorPercent": 5, "minRequests": 0}, "minRequests"),
    ({"windowSeconds": 60}, "maxErrorPercent"),
])
def test_bad_rollback_settings_are_refused_naming_the_field(settings, field):
    spec = {"model": {"uri": "builtin://digits-mlp"},
            "canary": {"model": {"uri": URI}, "trafficPercent": 20, "rollback": settings}}
    with pytest.raises(ValidationError) as refused:
        ModelServiceSpec.from_json(spec)
    assert field in str(refused.value)


# ---- what the evaluation loop judges ----------------------------------------------------------------------


def runtime_with(canary_status: dict, *, generation: int = 2):
    owner = Owner(name="digits", namespace="team-a", uid="u")
    runtime = Runtime()
    inputs = inputs_for(owner, generation, resolve_model_uri("builtin://digits-mlp"), None, "cluster.local")
    runtime.snapshots[("team-a", "digits")] = Snapshot(owner, inputs, {"canary": canary_status}, {})
    return runtime


def body(generation: int = 2, rollback_settings: dict | None = None) -> dict:
    canary = {"model": {"uri": URI}, "trafficPercent": 20, "rollback": rollback_settings or {"maxErrorPercent": 5}}
    return {"metadata": {"generation": generation}, "spec": {"model": {"uri": "builtin://digits-mlp"}, "canary": canary}}


SERVING = {"modelUri": URI, "trafficPercent": 20, "readyReplicas": 1}


def test_the_loop_judges_a_canary_that_gets_traffic_as_the_last_pass_left_it():
    found = candidate_of(runtime_with(SERVING), ("team-a", "digits"), body())
    assert (found.generation, found.traffic_percent, found.artifact) == (2, 20, (URI, None))
    assert found.rollback.max_error_percent == 5


@pytest.mark.parametrize("canary_status, spec, why", [
    ({**SERVING, "trafficPercent": 0}, body(), "no traffic (none Ready, or trafficPercent 0)"),
    ({**SERVING, "rolledBack": record()}, body(), "already rolled back"),
    ({**SERVING, "modelUri": None}, body(), "no candidate resolved yet"),
    (SERVING, body(generation=3), "a pass for a newer generation is due"),
    (SERVING, {"metadata": {"generation": 2}, "spec": {"model": {"uri": "builtin://digits-mlp"}}}, "no canary"),
    (SERVING, body(rollback_settings={"maxErrorPercent": 500}), "settings the pass refuses"),
])
def test_the_loop_leaves_alone(canary_status, spec, why):
    assert candidate_of(runtime_with(canary_status), ("team-a", "digits"), spec) is None, why


def test_a_status_only_pass_keeps_the_canary_and_its_rollback():
    previous = {"selector": "a=b,slimserve.io/model-version=stable", "canary": {**SERVING, "rolledBack": record()}}
    recomputed = {"selector": "a=b", "readyReplicas": 4}
    assert keep_canary_status(previous, recomputed) == {**previous, "readyReplicas": 4}
    assert keep_canary_status({"selector": "a=b"}, recomputed) == recomputed  # no canary: nothing to keep


def test_a_held_rollback_routes_and_scales_as_trafficpercent_zero():
    with_gateway = ModelServiceSpec.from_json({
        "model": {"uri": "builtin://digits-mlp"}, "replicas": 5,
        "canary": {"model": {"uri": URI}, "trafficPercent": 20, "gateway": {"name": "public"},
                   "rollback": {"maxErrorPercent": 5}}})
    assert targets(with_gateway, 5, None, 0) == (5, 0)
    serving = Side(1, True, 1)
    held = CanaryPass(True, 0, resolve_model_uri(URI), ReplicaPlan(5, 0), Side(5, True, 5), serving, None,
                      record(), record())
    assert held.weights == (100, 0)  # the HTTPRoute's, while the canary's pods still run


class Echo:
    info = ModelInfo(name="echo", version="1", inputs=(TensorSpec("x", "FP32", (-1, 2)),),
                     outputs=(TensorSpec("y", "FP32", (-1, 2)),))

    def predict(self, inputs):
        return {"y": inputs["x"]}


def test_the_inference_endpoints_are_the_servers_inference_routes():
    # Every POST route of a server (a decoder's too) is an inference call, and no other REST route is one.
    metrics = ServerMetrics()
    model = ServedModel.from_servable(Echo())
    with ThreadPoolExecutor(max_workers=1) as executor:
        plane = DataPlane(model, Batcher(ModelCaller(model.predict, executor, metrics), metrics), metrics,
                          max_batch_size=4)
        app = build_app(plane)
        add_generation_routes(app, plane, generation=None)
    posted = {route.name for route in app._routes if route.method == "POST"}
    assert set(INFERENCE_ENDPOINTS) - {"ModelInfer"} == posted  # ModelInfer: gRPC's inference method
