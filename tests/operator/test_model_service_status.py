"""ModelService status, Events and the work queue, without a cluster."""

from __future__ import annotations

import threading
import time

import kopf
import pytest

from slimserve.controller.builders.model_service import ArtifactToServe, Owner
from slimserve.controller.conditions import find_condition
from slimserve.controller.model_service_events import transition_events
from slimserve.controller.model_service_status import (
    Refusal,
    autoscaling_verdict,
    compose_status,
    evaluate_rollout,
    inputs_for,
    invalid_status,
    refusal_verdict,
    resolve_compression_job,
    resolve_model_uri,
    status_differs,
)
from slimserve.controller.model_service_keda import keda_mismatches, sweep_scaled_objects
from slimserve.controller.model_service_state import Runtime, Snapshot
from slimserve.controller.workqueue import WorkQueue

OWNER = Owner("digits", "team-a", "uid-1")
DIGEST = "sha256:" + "ab" * 32


def job(phase=None, succeeded=None, artifact=None, message=""):
    status = {"phase": phase, "conditions": []}
    if succeeded:
        status["conditions"].append({"type": "Succeeded", "status": succeeded, "reason": "X", "message": message})
    if artifact:
        status["artifact"] = artifact
    return {"metadata": {"name": "slim"}, "status": status}


def deployment(*, generation=1, observed=1, desired=2, replicas=2, updated=2, available=2, ready=2, conditions=()):
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": desired},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "updatedReplicas": updated,
            "availableReplicas": available,
            "readyReplicas": ready,
            "conditions": list(conditions),
        },
    }


# ---- model resolution ---------------------------------------------------------------------------------


def test_missing_job_is_not_found_and_serves_nothing():
    resolution = resolve_compression_job("slim", None)
    assert resolution.model is None
    assert (resolution.verdict.status, resolution.verdict.reason) == ("False", "CompressionJobNotFound")


def test_running_job_means_waiting():
    resolution = resolve_compression_job("slim", job(phase="Running", succeeded="Unknown"))
    assert resolution.model is None
    assert resolution.verdict.reason == "WaitingForCompression"
    assert "Running" in resolution.verdict.message


def test_succeeded_job_serves_its_artifact():
    resolution = resolve_compression_job(
        "slim", job(phase="Succeeded", succeeded="True", artifact={"uri": "pvc://m/slim", "digest": DIGEST})
    )
    assert resolution.model == ArtifactToServe("pvc://m/slim", DIGEST)
    assert (resolution.verdict.status, resolution.verdict.reason) == ("True", "CompressionSucceeded")


def test_failed_job_is_reported_with_its_message():
    resolution = resolve_compression_job("slim", job(phase="Failed", succeeded="False", message="accuracy budget"))
    assert resolution.model is None
    assert resolution.verdict.reason == "CompressionFailed"
    assert "accuracy budget" in resolution.verdict.message


def test_equal_job_states_resolve_equal():
    # The CompressionJob watch compares resolutions to decide whether a service needs a pass.
    running = job(phase="Running", succeeded="Unknown")
    assert resolve_compression_job("slim", running) == resolve_compression_job("slim", running)
    done = job(phase="Succeeded", succeeded="True", artifact={"uri": "pvc://m/slim", "digest": DIGEST})
    assert resolve_compression_job("slim", running) != resolve_compression_job("slim", done)


# ---- rollout ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state, reason",
    [
        (dict(generation=2, observed=1), "RollingOut"),
        (dict(updated=1), "RollingOut"),
        (dict(replicas=3), "RollingOut"),
        (dict(available=1), "RollingOut"),
        (dict(conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]),
         "ProgressDeadlineExceeded"),
    ],
)
def test_rollout_in_progress_is_not_ready(state, reason):
    rollout = evaluate_rollout(deployment(**state))
    assert (rollout.verdict.status, rollout.verdict.reason) == ("False", reason)


def test_rolled_out_deployment_is_ready():
    rollout = evaluate_rollout(deployment())
    assert (rollout.verdict.status, rollout.verdict.reason) == ("True", "Available")
    assert (rollout.replicas, rollout.ready_replicas) == (2, 2)


def test_scaled_to_zero_is_ready():
    rollout = evaluate_rollout(deployment(desired=0, replicas=0, updated=0, available=0, ready=0))
    assert (rollout.verdict.status, rollout.verdict.reason) == ("True", "ScaledToZero")


def test_brand_new_deployment_without_status_is_not_ready():
    rollout = evaluate_rollout({"metadata": {"generation": 1}, "spec": {"replicas": 1}})
    assert rollout.verdict.status == "False"


# ---- status -------------------------------------------------------------------------------------------


def inputs(resolution, *, generation=3, autoscaling=None):
    return inputs_for(OWNER, generation, resolution, autoscaling, "cluster.local")


def test_status_of_a_served_model():
    model = resolve_compression_job(
        "slim", job(phase="Succeeded", succeeded="True", artifact={"uri": "pvc://m/slim", "digest": DIGEST})
    )
    status = compose_status(None, inputs(model), evaluate_rollout(deployment()))
    assert status["observedGeneration"] == 3
    assert status["url"] == "http://digits.team-a.svc.cluster.local:8080"
    assert status["grpcAddress"] == "digits.team-a.svc.cluster.local:9000"
    assert (status["modelUri"], status["modelDigest"]) == ("pvc://m/slim", DIGEST)
    assert (status["replicas"], status["readyReplicas"]) == (2, 2)
    for type_ in ("Ready", "ModelAvailable"):
        condition = find_condition(status["conditions"], type_)
        assert condition["status"] == "True" and condition["observedGeneration"] == 3
    assert find_condition(status["conditions"], "AutoscalingReady") is None


def test_waiting_for_compression_is_not_ready_and_keeps_what_was_served():
    earlier = compose_status(None, inputs(resolve_model_uri("pvc://m/old")), evaluate_rollout(deployment()))
    status = compose_status(earlier, inputs(resolve_compression_job("slim", job(phase="Running"))), None)
    ready = find_condition(status["conditions"], "Ready")
    available = find_condition(status["conditions"], "ModelAvailable")
    assert (ready["status"], ready["reason"]) == ("False", "WaitingForCompression")
    assert (available["status"], available["reason"]) == ("False", "WaitingForCompression")
    assert status["modelUri"] == "pvc://m/old"


def test_transition_time_moves_only_when_the_status_does():
    first = compose_status(None, inputs(resolve_model_uri("file:///m")), evaluate_rollout(deployment(available=1)))
    for condition in first["conditions"]:
        condition["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    second = compose_status(first, inputs(resolve_model_uri("file:///m")), evaluate_rollout(deployment(available=1, ready=1)))
    assert find_condition(second["conditions"], "ModelAvailable")["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    third = compose_status(second, inputs(resolve_model_uri("file:///m")), evaluate_rollout(deployment()))
    assert find_condition(third["conditions"], "Ready")["lastTransitionTime"] != "2020-01-01T00:00:00Z"


def test_keda_missing_is_a_condition_and_autoscaling_removed_drops_it():
    verdict = autoscaling_verdict("concurrency", keda_installed=False)
    status = compose_status(None, inputs(resolve_model_uri("file:///m"), autoscaling=verdict), evaluate_rollout(deployment()))
    condition = find_condition(status["conditions"], "AutoscalingReady")
    assert (condition["status"], condition["reason"]) == ("False", "KedaNotInstalled")
    assert "KEDA" in condition["message"]
    assert find_condition(status["conditions"], "Ready")["status"] == "True"  # it still serves
    without = compose_status(status, inputs(resolve_model_uri("file:///m")), evaluate_rollout(deployment()))
    assert find_condition(without["conditions"], "AutoscalingReady") is None
    assert autoscaling_verdict("concurrency", keda_installed=True).reason == "ScaledObject"
    assert autoscaling_verdict("cpu", keda_installed=False).reason == "HorizontalPodAutoscaler"


def test_invalid_status_and_differences():
    status = invalid_status({"url": "http://x"}, 4, "UnknownNodePool", "spec.nodePool: unknown node pool 'tpu'")
    ready = find_condition(status["conditions"], "Ready")
    assert (ready["reason"], ready["observedGeneration"]) == ("UnknownNodePool", 4)
    assert status["url"] == "http://x"
    assert not status_differs(status, dict(status))
    assert status_differs(status, {**status, "observedGeneration": 5})
    assert not status_differs({}, {"modelDigest": None})  # absent and null are the same


def test_refused_children_are_a_warning_until_an_apply_succeeds():
    served = compose_status(None, inputs(resolve_model_uri("file:///m")), evaluate_rollout(deployment()))
    refusals = [Refusal("ApplyFailed", "applying PodDisruptionBudget digits: 500 etcd is gone"),
                Refusal("ChildConflict", "Service team-a/digits exists and is controlled by no controller")]
    refused = compose_status(served, inputs(resolve_model_uri("file:///m")), None, refusal_verdict(refusals))
    ready = find_condition(refused["conditions"], "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ChildConflict")
    assert "500 etcd is gone" in ready["message"] and "Service team-a/digits" in ready["message"]
    assert find_condition(refused["conditions"], "Stalled")["status"] == "True"
    assert refused["url"] == served["url"]  # what served before is not withdrawn
    assert [(e.type, e.reason) for e in transition_events(served, refused)] == [("Warning", "ChildConflict")]

    failed = compose_status(None, inputs(resolve_model_uri("file:///m")), None, refusal_verdict(refusals[:1]))
    assert find_condition(failed["conditions"], "Ready")["reason"] == "ApplyFailed"
    assert find_condition(failed["conditions"], "Stalled")["status"] == "False"  # may pass by itself
    assert "url" not in {k for k, v in failed.items() if v is not None}  # nothing advertised before it is applied

    recovered = compose_status(refused, inputs(resolve_model_uri("file:///m")), evaluate_rollout(deployment()))
    assert find_condition(recovered["conditions"], "Ready")["reason"] == "Available"
    assert find_condition(recovered["conditions"], "Stalled")["status"] == "False"


@pytest.mark.parametrize("reason", ["TLSSecretMissing", "TLSSecretInvalid", "APIKeysSecretMissing",
                                    "APIKeysSecretInvalid", "ModelCacheClaimMissing"])
def test_a_missing_secret_or_claim_is_a_warning_event(reason):
    served = compose_status(None, inputs(resolve_model_uri("file:///m")), evaluate_rollout(deployment()))
    refused = compose_status(served, inputs(resolve_model_uri("file:///m")), None,
                             refusal_verdict([Refusal(reason, "Secret team-a/certs not found")]))
    assert [(e.type, e.reason) for e in transition_events(served, refused)] == [("Warning", reason)]
    assert [(e.type, e.reason) for e in transition_events(None, refused)] == [("Warning", reason)]


def test_refused_passes_back_off_up_to_a_cap_and_start_over_once_applied():
    runtime = Runtime()
    key = ("team-a", "digits")
    delays = [runtime.refused_retry_delay(key) for _ in range(8)]
    assert delays == [2, 4, 8, 16, 32, 60, 60, 60]
    runtime.applied(key)
    assert runtime.refused_retry_delay(key) == 2
    assert runtime.refused_retry_delay(("team-a", "other")) == 2


def test_events_announce_transitions_only():
    before = compose_status(None, inputs(resolve_model_uri("file:///m")), evaluate_rollout(deployment(available=0)))
    after = compose_status(before, inputs(resolve_model_uri("file:///m")), evaluate_rollout(deployment()))
    assert transition_events(None, before) == []  # a new service finding its model and rolling out: no news yet
    events = transition_events(before, after)
    assert [(e.type, e.reason) for e in events] == [("Normal", "Available")]
    assert transition_events(after, after) == []
    assert [e.reason for e in transition_events(None, after)] == ["Available"]
    missing = compose_status(after, inputs(resolve_compression_job("slim", None)), None)
    assert ("Warning", "CompressionJobNotFound") in [(e.type, e.reason) for e in transition_events(after, missing)]


def keda_runtime() -> Runtime:
    """Services "with" (ScaledObject made), "without" (KEDA missing), "cpu" (an HPA), "fixed" (no autoscaling)."""
    runtime = Runtime()
    verdicts = {
        "with": autoscaling_verdict("concurrency", keda_installed=True),
        "without": autoscaling_verdict("concurrency", keda_installed=False),
        "cpu": autoscaling_verdict("cpu", keda_installed=True),
        "fixed": None,
    }
    for name, verdict in verdicts.items():
        runtime.snapshots[("ns", name)] = Snapshot(OWNER, inputs(resolve_model_uri("file:///m"), autoscaling=verdict), {}, {})
    return runtime


def scaled_object(owner: str, spec: dict | None = None) -> dict:
    reference = {**Owner(owner, "ns", "u").reference()}
    return {"metadata": {"name": owner, "namespace": "ns", "ownerReferences": [reference]}, "spec": spec or {}}


def test_services_whose_keda_assumption_went_stale_are_found():
    runtime = keda_runtime()
    assert keda_mismatches(runtime, installed=True) == [("ns", "without")]
    assert keda_mismatches(runtime, installed=False) == [("ns", "with")]


def test_scaled_objects_missing_left_over_or_edited_are_found():
    from slimserve.controller.builders.model_service import SCALED_OBJECT_REF

    runtime = keda_runtime()
    assert sweep_scaled_objects(runtime, []) == [("ns", "with")]  # deleted by hand
    assert runtime.scaled_objects == set()
    made = scaled_object("with", {"minReplicaCount": 0})
    runtime.remember_child(("ns", "with"), (*SCALED_OBJECT_REF, "with"), made)
    assert sweep_scaled_objects(runtime, [made]) == []
    assert runtime.scaled_objects == {("ns", "with")}
    edited = scaled_object("with", {"minReplicaCount": 3})
    assert sweep_scaled_objects(runtime, [edited]) == [("ns", "with")]
    leftovers = [scaled_object("cpu"), scaled_object("fixed"), scaled_object("unknown-yet")]
    assert sweep_scaled_objects(runtime, [made, *leftovers]) == [("ns", "cpu"), ("ns", "fixed")]


def test_an_optional_child_exists_if_seen_or_applied():
    from slimserve.controller.builders.model_service import PDB_REF, SCALED_OBJECT_REF, ChildRef

    runtime = Runtime(owned={"PodDisruptionBudget": {}})
    pdb, scaled = ChildRef(*PDB_REF, "digits"), ChildRef(*SCALED_OBJECT_REF, "digits")
    assert not runtime.exists(pdb, OWNER) and not runtime.exists(scaled, OWNER)
    runtime.remember_child(("team-a", "digits"), (*PDB_REF, "digits"), {"spec": {}})
    assert runtime.exists(pdb, OWNER)
    runtime.remember_child(("team-a", "digits"), (*PDB_REF, "digits"), None)
    assert not runtime.exists(pdb, OWNER)
    runtime.owned["PodDisruptionBudget"] = {("team-a", "digits"): ["digits"]}
    assert runtime.exists(pdb, OWNER)
    runtime.set_scaled_objects({("team-a", "digits")})
    assert runtime.exists(scaled, OWNER)


# ---- work queue ---------------------------------------------------------------------------------------


def run_queue(work, keys, *, until, timeout=5.0, **kwargs) -> WorkQueue:
    """Run the queue until `until()`; returned stopped: its workers have finished, whatever they re-queued is in it."""
    queue = WorkQueue(work, workers=3, backoffs=(0.01, 0.02), **kwargs)
    queue.start()
    try:
        for key in keys:
            queue.add(key)
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        queue.stop()
    return queue


def test_queue_merges_a_burst_and_never_runs_a_key_twice_at_once():
    calls: list[str] = []
    active: set[str] = set()
    overlap = threading.Event()
    gate = threading.Event()

    def work(key):
        if key in active:
            overlap.set()
        active.add(key)
        calls.append(key)
        gate.wait(1)
        active.discard(key)

    queue = WorkQueue(work, workers=3)
    queue.start()
    try:
        queue.add("a")
        while not calls:
            time.sleep(0.005)
        for _ in range(20):  # while "a" runs: remembered once, run once more afterwards
            queue.add("a")
        gate.set()
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        queue.stop()  # joins the workers: a third run would have started, or be queued, by now
    assert calls == ["a", "a"] and len(queue) == 0
    assert not overlap.is_set()


def test_queue_retries_failures_until_they_succeed():
    attempts = {"n": 0}

    def work(key):
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise RuntimeError("API server unavailable")

    run_queue(work, ["x"], until=lambda: attempts["n"] >= 3)
    assert attempts["n"] == 3


def test_queue_honours_temporary_error_delay_and_drops_permanent_errors():
    seen: dict[str, list[float]] = {"t": [], "p": []}

    def work(key):
        seen[key].append(time.monotonic())
        if key == "t" and len(seen["t"]) == 1:
            raise kopf.TemporaryError("waiting", delay=0.3)
        if key == "p":
            raise kopf.PermanentError("invalid spec")

    queue = run_queue(work, ["t", "p"], until=lambda: len(seen["t"]) >= 2)
    assert len(seen["t"]) == 2 and seen["t"][1] - seen["t"][0] >= 0.29
    assert len(seen["p"]) == 1 and len(queue) == 0  # the permanent error was neither retried nor re-queued


# ---- specs the operator cannot act on ------------------------------------------------------------------


@pytest.fixture
def written(monkeypatch):
    """The statuses reconcile writes, without an API server (only the rejecting paths are exercised)."""
    from slimserve.controller import model_service_reconcile

    statuses: list[dict] = []
    monkeypatch.setattr(model_service_reconcile, "write_status", lambda api, owner, status: statuses.append(status) or True)
    return statuses


def rejected(body: dict) -> tuple[str, dict]:
    from slimserve.controller.config import OperatorConfig
    from slimserve.controller.model_service_reconcile import reconcile

    runtime = Runtime(config=OperatorConfig())
    runtime.events.post = lambda *args: None  # no API server to post to
    with pytest.raises(kopf.PermanentError) as raised:
        reconcile(runtime, body)
    return str(raised.value), runtime.snapshots


def body(spec: dict, generation: int = 2) -> dict:
    return {"apiVersion": "slimserve.io/v1alpha1", "kind": "ModelService",
            "metadata": {"name": "digits", "namespace": "team-a", "uid": "uid-1", "generation": generation},
            "spec": spec}


def test_spec_the_schema_let_through_is_rejected_naming_the_field(written):
    message, snapshots = rejected(body({"model": {"uri": "builtin://digits-mlp"}, "replicas": -1}))
    assert "spec.replicas" in message
    ready = find_condition(written[-1]["conditions"], "Ready")
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("False", "InvalidSpec", 2)
    assert "spec.replicas" in ready["message"]
    assert written[-1]["observedGeneration"] == 2
    assert snapshots == {}


def test_unknown_node_pool_is_rejected_listing_the_known_ones(written):
    message, _ = rejected(body({"model": {"uri": "builtin://digits-mlp"}, "nodePool": "tpu"}))
    ready = find_condition(written[-1]["conditions"], "Ready")
    assert ready["reason"] == "UnknownNodePool"
    assert "'tpu'" in ready["message"] and "cpu, gpu" in ready["message"] and "spec.nodePool" in message


def test_a_write_refused_for_a_terminating_namespace_is_told_apart():
    from kubernetes.client.exceptions import ApiException

    from slimserve.controller.kube import namespace_terminating

    def refused(status: int, body: str) -> ApiException:
        exc = ApiException(status=status, reason="Forbidden")
        exc.body = body
        return exc

    terminating = '{"details":{"causes":[{"reason":"NamespaceTerminating","field":"metadata.namespace"}]}}'
    assert namespace_terminating(refused(403, terminating))
    assert not namespace_terminating(refused(403, '{"message":"deployments.apps is forbidden: User cannot create"}'))
    assert not namespace_terminating(refused(409, terminating))
    assert not namespace_terminating(refused(403, "not json"))
