"""The canary's automatic rollback at work: a loop per ModelService with spec.canary.rollback (a Kopf daemon, see
`model_service`), stopped by Kopf when the setting goes.

Every `evaluation_interval` it asks Prometheus for the canary's inference requests by status code and records
the outcome as the CanaryRolledBack condition. When the error rate exceeds the threshold it records the rollback
in status.canary.rolledBack and queues a full pass, which holds the canary at trafficPercent 0 from then on: the
spec is the user's, and the status is what the pass reads (also after a restart). Nothing is evaluated while
the canary gets no traffic, while a rollback holds, or while a pass for a newer generation is due. Prometheus
unreachable, or refusing the query, leaves the condition Unknown and nothing rolled back; the next tries back off.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Mapping

import kopf
from pydantic import ValidationError

from slimserve.api.model_service import CanaryRollbackSpec, ModelServiceSpec
from slimserve.controller import model_service_runtime as runtime_of
from slimserve.controller.backoff import doubling_delay
from slimserve.controller.canary_rollback import (
    CANARY_ROLLED_BACK,
    FIRST_INTERVAL_S,
    UNAVAILABLE_RETRY_CAP_S,
    AnswerInvalid,
    Measurement,
    decide,
    error_rate_query,
    evaluation_interval,
    requests_by_code,
    rollback_record,
    unavailable_verdict,
)
from slimserve.controller.conditions import now_rfc3339, set_condition
from slimserve.controller.model_service_reconcile import publish
from slimserve.controller.model_service_state import Key, Runtime
from slimserve.controller.model_service_status import Verdict
from slimserve.controller.prometheus import PrometheusUnavailable, instant_query

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """The canary an evaluation is about, as the last full pass left it."""

    generation: int
    rollback: CanaryRollbackSpec
    traffic_percent: int
    canary_status: dict[str, Any]

    @property
    def artifact(self) -> tuple[Any, Any]:
        return artifact_of(self.canary_status)


def artifact_of(canary_status: Mapping[str, Any]) -> tuple[Any, Any]:
    """The candidate a status.canary is about: its artifact's URI and digest."""
    return canary_status.get("modelUri"), canary_status.get("modelDigest")


def candidate_of(runtime: Runtime, key: Key, body: Mapping[str, Any]) -> Candidate | None:
    """The canary to evaluate now; None when there is nothing to judge (see the module's docstring)."""
    try:
        spec = ModelServiceSpec.from_json(dict(body.get("spec") or {}))
    except ValidationError:
        return None  # the full pass says what is wrong with it
    snapshot = runtime.snapshots.get(key)
    generation = (body.get("metadata") or {}).get("generation", 0)
    if spec.canary is None or spec.canary.rollback is None or snapshot is None or snapshot.inputs.generation != generation:
        log.debug("%s/%s: no canary to judge, or no pass for generation %s yet", *key, generation)
        return None
    canary = snapshot.status.get("canary") or {}
    if canary.get("rolledBack") or not canary.get("trafficPercent") or not canary.get("modelUri"):
        log.debug("%s/%s: the canary is not judged now: %s", *key, canary)
        return None
    return Candidate(generation, spec.canary.rollback, spec.canary.traffic_percent, dict(canary))


def record_evaluation(runtime: Runtime, key: Key, candidate: Candidate, verdict: Verdict,
                      rolled_back: dict[str, Any] | None) -> bool:
    """Write an evaluation's outcome into the status (and the rollback, if any); False when the service moved on
    meanwhile (another generation, or another candidate) and the outcome no longer applies."""
    with runtime.lock(key):
        snapshot = runtime.snapshots.get(key)
        if snapshot is None or snapshot.inputs.generation != candidate.generation:
            return False
        canary = snapshot.status.get("canary") or {}
        if canary.get("rolledBack") or artifact_of(canary) != candidate.artifact:
            return False
        conditions = set_condition(snapshot.status.get("conditions"), CANARY_ROLLED_BACK, verdict.status,
                                   verdict.reason, verdict.message, generation=candidate.generation)
        status = {**snapshot.status, "conditions": sorted(conditions, key=lambda c: c["type"])}
        if rolled_back is not None:
            status["canary"] = {**canary, "rolledBack": rolled_back, "message": "rolling back on its error rate"}
        publish(runtime, runtime.api, snapshot.owner, snapshot.body_ref, snapshot.status, status)
        runtime.snapshots[key] = dataclasses.replace(snapshot, status=status)
    if rolled_back is not None:
        runtime_of.queue_full_pass(runtime, key)
    return True


async def evaluate(runtime: Runtime, key: Key, candidate: Candidate, failures: int = 0) -> bool:
    """One evaluation; whether Prometheus answered. `failures`: evaluations in a row it did not."""
    snapshot = runtime.snapshots.get(key)
    if snapshot is None:
        return True  # deleted meanwhile: nothing to judge
    window = candidate.rollback.window_seconds
    address = runtime.config.prometheus_address
    try:
        counts = requests_by_code(await instant_query(address, error_rate_query(snapshot.owner, window)))
    except (PrometheusUnavailable, AnswerInvalid) as exc:
        retry_in = retry_delay(candidate.rollback, failures + 1)
        log.info("%s/%s: the canary's error rate is unknown: %s", *key, exc)
        await asyncio.to_thread(record_evaluation, runtime, key, candidate,
                                unavailable_verdict(address, str(exc), retry_in), None)
        return False
    measurement = Measurement.of(counts)
    decision = decide(measurement, candidate.rollback)
    record = None
    if decision.roll_back:
        log.warning("%s/%s: rolling the canary back: %s", *key, decision.verdict.message)
        record = rollback_record(candidate.canary_status, candidate.traffic_percent, measurement, window, now_rfc3339())
    await asyncio.to_thread(record_evaluation, runtime, key, candidate, decision.verdict, record)
    return True


def retry_delay(rollback: CanaryRollbackSpec | None, failures: int) -> float:
    """Seconds until the next evaluation: the interval, doubled for each failed one in a row (capped)."""
    interval = evaluation_interval(rollback.window_seconds) if rollback else FIRST_INTERVAL_S
    return doubling_delay(interval, failures, max(UNAVAILABLE_RETRY_CAP_S, interval))


def rollback_of(body: Mapping[str, Any]) -> CanaryRollbackSpec | None:
    rollback = ((body.get("spec") or {}).get("canary") or {}).get("rollback")
    try:
        return CanaryRollbackSpec.from_json(dict(rollback)) if rollback else None
    except ValidationError:
        return None


async def follow_error_rate(runtime: Runtime, key: Key, body: Mapping[str, Any], stopped: kopf.DaemonStopped) -> None:
    """The loop, until Kopf stops it; `body` is Kopf's live view of the ModelService."""
    failures = 0
    while not stopped:
        await stopped.wait(retry_delay(rollback_of(body), failures))
        if stopped:
            return
        try:
            candidate = await asyncio.to_thread(candidate_of, runtime, key, body)
            if candidate is not None:
                failures = 0 if await evaluate(runtime, key, candidate, failures) else failures + 1
        except Exception:  # the API server briefly away, say: the loop goes on, backing off
            log.exception("%s/%s: evaluating the canary's error rate failed", *key)
            failures += 1
