"""A CompressionJob's status derived from its Job, without a cluster."""

from __future__ import annotations

import pytest

from slimserve.controller.compression_job_status import (
    blocked_status,
    failure_reason,
    invalid_status,
    pending_status,
    status_from_job,
    unblocked_status,
)
from slimserve.controller.conditions import find_condition
from slimserve.controller.job_status import condition_change_events, is_finished, may_change_status


def condition(conditions, type_):
    found = find_condition(conditions, type_)
    assert found is not None, f"no {type_} condition in {conditions}"
    return found["status"], found["reason"], found["message"]


def pending(generation=2, job="digits-g2"):
    return pending_status({}, generation=generation, job_name=job)


def compression_job(status, generation=2):
    return {"metadata": {"name": "digits", "generation": generation, "uid": "u1"}, "status": status}


def job(name="digits-g2", **status):
    return {"metadata": {"name": name}, "status": status}


def failed_pod(message="BudgetExceeded: accuracy fell 3.1 points, budget 1.0", reason="Error", code=3):
    return {
        "metadata": {"name": "digits-g2-abcde"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {"name": "compressor", "state": {"terminated": {"reason": reason, "exitCode": code, "message": message}}}
            ],
        },
    }


def no_pod():
    return None


def derive(status, the_job, generation=2, pod=no_pod, **kwargs):
    return status_from_job(compression_job(status, generation), the_job, generation=generation, failed_pod=pod, **kwargs)


COMPLETE = {"type": "Complete", "status": "True", "lastTransitionTime": "2030-01-01T00:05:00Z"}
ARTIFACT = {"uri": "pvc://artifacts/x", "digest": "sha256:ab", "sizeBytes": 10, "format": "slimserve/v1"}


def test_a_new_generation_is_pending_and_drops_the_previous_runs_results():
    before = {
        "observedGeneration": 1,
        "phase": "Succeeded",
        "artifact": ARTIFACT,
        "metrics": {"sizeRatio": 4.0},
        "progress": {"fraction": 1.0},
        "completionTime": "2030-01-01T00:00:00Z",
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "Completed", "message": ""}],
    }
    patch = pending_status(before, generation=2, job_name="digits-g2")
    assert patch["observedGeneration"] == 2 and patch["phase"] == "Pending" and patch["jobName"] == "digits-g2"
    for field in ("artifact", "metrics", "progress", "startTime", "completionTime"):
        assert patch[field] is None  # merge patch: null deletes
    assert condition(patch["conditions"], "Succeeded")[:2] == ("Unknown", "Pending")
    assert condition(patch["conditions"], "Started")[:2] == ("False", "Pending")
    assert all(c["observedGeneration"] == 2 for c in patch["conditions"])


def test_a_started_generation_is_not_reset_again():
    status = {**pending(), "phase": "Running"}
    assert pending_status(status, generation=2, job_name="digits-g2") is None


def test_invalid_spec_sets_phase_invalid_and_succeeded_false():
    before = {**pending(), "phase": "Running", "progress": {"fraction": 0.5}}
    patch = invalid_status(before, generation=3, message="spec.nodePool: unknown node pool 'tpu'")
    assert patch["phase"] == "Invalid" and patch["observedGeneration"] == 3
    assert patch["jobName"] is None and patch["progress"] is None  # the stopped run's fields are dropped
    assert "artifact" not in patch  # nothing to delete is not written
    assert condition(patch["conditions"], "Succeeded") == ("False", "InvalidSpec", "spec.nodePool: unknown node pool 'tpu'")
    same = {**patch, "conditions": patch["conditions"]}
    assert invalid_status(same, generation=3, message="spec.nodePool: unknown node pool 'tpu'") is None


CONFLICT = "ServiceAccount team-a/digits-compressor exists and is controlled by no controller"


def test_a_blocked_generation_is_pending_stalled_and_succeeded_false_with_the_cause():
    before = {"observedGeneration": 1, "phase": "Succeeded", "artifact": ARTIFACT, "conditions": []}
    patch = blocked_status(before, generation=2, job_name="digits-g2", reason="ChildConflict", message=CONFLICT)
    assert (patch["observedGeneration"], patch["phase"], patch["jobName"]) == (2, "Pending", "digits-g2")
    assert patch["artifact"] is None  # a new generation: the previous run's result is not this one's
    assert condition(patch["conditions"], "Succeeded") == ("False", "ChildConflict", CONFLICT)
    assert condition(patch["conditions"], "Stalled") == ("True", "ChildConflict", CONFLICT)  # kstatus: Failed
    assert condition(patch["conditions"], "Reconciling")[:2] == ("False", "ChildConflict")
    blocked = {**before, **patch}
    assert blocked_status(blocked, generation=2, job_name="digits-g2", reason="ChildConflict", message=CONFLICT) is None
    # A retry finds the status already speaking of this generation: no flip back to Pending before the Job exists.
    assert pending_status(blocked, generation=2, job_name="digits-g2") is None


def test_once_the_job_exists_a_blocked_generation_is_plain_pending_again():
    blocked = blocked_status({}, generation=2, job_name="digits-g2", reason="ApplyFailed", message="exceeded quota")
    patch = unblocked_status(blocked, generation=2, job_name="digits-g2")
    assert patch["phase"] == "Pending" and patch["jobName"] == "digits-g2"
    assert condition(patch["conditions"], "Succeeded")[:2] == ("Unknown", "Pending")
    assert condition(patch["conditions"], "Stalled")[:2] == ("False", "NotStalled")
    assert condition(patch["conditions"], "Reconciling")[:2] == ("True", "Pending")
    assert unblocked_status({**blocked, **patch}, generation=2, job_name="digits-g2") is None
    assert unblocked_status(pending(), generation=2, job_name="digits-g2") is None
    assert unblocked_status(blocked, generation=3, job_name="digits-g3") is None  # another generation's status


def test_a_blocked_generation_whose_pod_starts_is_running():
    blocked = blocked_status(pending(), generation=2, job_name="digits-g2", reason="ApplyFailed", message="quota")
    patch = derive({**pending(), **blocked}, job("digits-g2", ready=1))
    assert patch["phase"] == "Running"
    assert condition(patch["conditions"], "Stalled")[:2] == ("False", "NotStalled")


def test_only_a_final_phase_of_this_generation_counts_as_finished():
    assert is_finished({"observedGeneration": 2, "phase": "Succeeded"}, 2)
    assert is_finished({"observedGeneration": 2, "phase": "Failed"}, 2)
    assert not is_finished({"observedGeneration": 1, "phase": "Succeeded"}, 2)
    assert not is_finished({"observedGeneration": 2, "phase": "Running"}, 2)
    assert not is_finished({"observedGeneration": 2, "phase": "Invalid"}, 2)
    assert not is_finished(None, 1)


def test_a_created_job_without_a_ready_pod_changes_nothing():
    assert derive(pending(), job(active=1, startTime="2030-01-01T00:00:00Z")) is None


def test_a_ready_pod_means_running_and_started():
    patch = derive(pending(), job(active=1, ready=1, startTime="2030-01-01T00:00:00Z"))
    assert patch["phase"] == "Running"
    assert patch["startTime"] == "2030-01-01T00:00:00Z"
    assert condition(patch["conditions"], "Started")[:2] == ("True", "PodStarted")
    assert condition(patch["conditions"], "Succeeded")[:2] == ("Unknown", "Running")


def test_complete_with_artifact_succeeds():
    status = {**pending(), "artifact": ARTIFACT}
    patch = derive(status, job(succeeded=1, completionTime="2030-01-01T00:05:00Z", conditions=[COMPLETE]))
    assert patch["phase"] == "Succeeded"
    assert patch["completionTime"] == "2030-01-01T00:05:00Z"
    assert condition(patch["conditions"], "Succeeded") == ("True", "Completed", "artifact pvc://artifacts/x (sha256:ab)")


def test_complete_without_artifact_fails():
    patch = derive(pending(), job(succeeded=1, conditions=[COMPLETE]))
    assert patch["phase"] == "Failed"
    assert condition(patch["conditions"], "Succeeded")[:2] == ("False", "ArtifactMissing")


def test_failure_carries_the_compressors_reason_and_the_pods_details():
    failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
              "message": "Job has reached the specified backoff limit", "lastTransitionTime": "2030-01-01T00:03:00Z"}
    patch = derive(pending(), job(failed=1, conditions=[failed]), pod=failed_pod)
    assert patch["phase"] == "Failed" and patch["completionTime"] == "2030-01-01T00:03:00Z"
    status, reason, message = condition(patch["conditions"], "Succeeded")
    assert (status, reason) == ("False", "BudgetExceeded")
    assert message == (
        "Job has reached the specified backoff limit; "
        "pod digits-g2-abcde: Error, exit code 3: accuracy fell 3.1 points, budget 1.0"
    )


@pytest.mark.parametrize(
    "job_reason, pod, expected",
    [
        ("BackoffLimitExceeded", failed_pod("Traceback (most recent call last): boom"), "JobFailed"),
        ("BackoffLimitExceeded", None, "JobFailed"),
        ("DeadlineExceeded", failed_pod(), "DeadlineExceeded"),  # the Job's deadline wins over the pod's say
        ("BackoffLimitExceeded", failed_pod("OOMKilled", reason="OOMKilled", code=137), "JobFailed"),
    ],
)
def test_failure_reasons(job_reason, pod, expected):
    reason, message = failure_reason({"type": "Failed", "status": "True", "reason": job_reason}, pod)
    assert reason == expected
    if pod is not None:
        assert "pod digits-g2-abcde" in message


def test_the_pod_is_looked_up_only_for_a_failed_job():
    def forbidden():
        raise AssertionError("pods listed for a Job that did not fail")

    assert derive(pending(), job(active=1, ready=1), pod=forbidden)["phase"] == "Running"


def test_a_job_deleted_before_it_finished_fails_the_run():
    status = {**pending(), "phase": "Running"}
    patch = derive(status, job(active=1, ready=1), deleted=True)
    assert patch["phase"] == "Failed"
    assert condition(patch["conditions"], "Succeeded")[:2] == ("False", "JobDeleted")


@pytest.mark.parametrize(
    "status, the_job, generation",
    [
        (pending(generation=1, job="digits-g1"), job(name="digits-g1", ready=1), 1),  # object now at generation 2
        ({**pending(), "phase": "Succeeded"}, job(failed=1), 2),  # finished runs stay as they ended
        (pending(), job(name="digits-g9", ready=1), 2),  # not the Job the status names
        ({}, job(ready=1), 2),  # reconcile has not written this generation yet
    ],
)
def test_stale_or_foreign_jobs_change_nothing(status, the_job, generation):
    assert status_from_job(compression_job(status, 2), the_job, generation=generation, failed_pod=no_pod) is None


def test_unchanged_status_writes_nothing():
    running = {**pending()}
    running.update(derive(running, job(active=1, ready=1, startTime="2030-01-01T00:00:00Z")))
    assert derive(running, job(active=1, ready=1, startTime="2030-01-01T00:00:00Z")) is None


def test_events_follow_succeeded_transitions_and_the_start():
    first = pending()["conditions"]
    events = condition_change_events(None, first)
    assert [(e["type"], e["reason"]) for e in events] == [("Normal", "Pending")]
    running = derive(pending(), job(ready=1))["conditions"]
    assert [(e["type"], e["reason"]) for e in condition_change_events(first, running)] == [
        ("Normal", "PodStarted"),
        ("Normal", "Running"),
    ]
    failed = derive({**pending(), "conditions": running}, job(conditions=[{"type": "Failed", "status": "True"}]))
    assert [(e["type"], e["reason"]) for e in condition_change_events(running, failed["conditions"])] == [
        ("Warning", "JobFailed")
    ]
    assert condition_change_events(running, running) == []


def test_only_a_started_finished_or_deleted_job_may_change_the_status():
    assert not may_change_status(job(active=1, startTime="2030-01-01T00:00:00Z"))
    assert may_change_status(job(active=1), deleted=True)
    assert may_change_status(job(ready=1))
    assert may_change_status(job(failed=1))
    assert may_change_status(job(conditions=[COMPLETE]))
    assert may_change_status(job(conditions=[{"type": "Failed", "status": "True"}]))
