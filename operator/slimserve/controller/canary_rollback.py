"""The canary's automatic rollback (spec.canary.rollback), as pure functions: the Prometheus query of the canary's
inference requests by status code, what its answer measures, the decision, and the status it leaves.

The loop that asks and acts is `model_service_canary_rollback`; the full pass holds a rollback through
`rollback_holds` (see docs/canary.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from slimserve.api.model_service import CanaryRollbackSpec, CanarySpec
from slimserve.controller.builders.canary import canary_name
from slimserve.controller.builders.model_service import CANARY, ArtifactToServe, Owner, pod_matchers
from slimserve.controller.conditions import FALSE, TRUE, UNKNOWN, find_condition, set_condition
from slimserve.controller.model_service_status import Verdict

CANARY_ROLLED_BACK = "CanaryRolledBack"
ERROR_RATE_EXCEEDED = "ErrorRateExceeded"
WITHIN_THRESHOLD = "WithinThreshold"
TOO_FEW_REQUESTS = "TooFewRequests"
METRICS_UNAVAILABLE = "MetricsUnavailable"
RESUMED = "Resumed"

REQUESTS_METRIC = "slimserve_requests_total"
MODEL_INFO_METRIC = "slimserve_model_info"
# The servers' inference endpoints (their `endpoint` label): REST routes and the gRPC method. Health, metadata
# and /metrics calls are left out: the probes alone would dilute any error rate.
INFERENCE_ENDPOINTS = ("infer", "generate", "generate_stream", "completions", "chat_completions", "ModelInfer")
# gRPC statuses that are the server's failure (those HTTP 500, 503 and 504 map to, and their kin); the rest are
# the caller's (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED: 429, ...).
GRPC_SERVER_ERRORS = frozenset({"INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "UNKNOWN", "DATA_LOSS"})

# Between evaluations: a quarter of the window, within these bounds.
FIRST_INTERVAL_S, LONGEST_INTERVAL_S = 5.0, 30.0
# Prometheus unreachable or refusing the query: evaluations back off, doubling up to this.
UNAVAILABLE_RETRY_CAP_S = 300.0


def evaluation_interval(window_seconds: int) -> float:
    return min(max(window_seconds / 4, FIRST_INTERVAL_S), LONGEST_INTERVAL_S)


def is_server_error(code: str) -> bool:
    """Whether a `code` label (an HTTP status, or a gRPC status name) is the server's failure."""
    return (len(code) == 3 and code.isdigit() and code.startswith("5")) or code in GRPC_SERVER_ERRORS


def error_rate_query(owner: Owner, window_seconds: int) -> str:
    """The canary pods' inference requests of the last `window_seconds`, summed by status code.

    The pods are those of the canary Deployment, joined on `slimserve_model_info{model_version="canary"}` so that
    only servers that say they serve the candidate count (docs/canary.md's join).
    """
    pods = pod_matchers(owner.namespace, canary_name(owner))
    endpoints = "|".join(INFERENCE_ENDPOINTS)
    requests = f'increase({REQUESTS_METRIC}{{{pods},endpoint=~"{endpoints}"}}[{window_seconds}s])'
    version = f'{MODEL_INFO_METRIC}{{{pods},model_version="{CANARY}"}}'
    return f"sum by (code) ({requests} * on (namespace, pod) group_left () {version})"


class AnswerInvalid(ValueError):
    """Prometheus' answer is not the instant vector the query asks for."""


def requests_by_code(result: Any) -> dict[str, float]:
    """The `result` of a successful instant query of `error_rate_query`: requests per status code."""
    if not isinstance(result, list):
        raise AnswerInvalid(f"expected a list of samples, got {type(result).__name__}")
    counts: dict[str, float] = {}
    for sample in result:
        try:
            code = str(sample["metric"].get("code", ""))
            value = float(sample["value"][1])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise AnswerInvalid(f"a sample without a code and a value: {sample!r:.200}") from exc
        if math.isnan(value) or value < 0:  # no samples to take an increase of, or garbage: nothing counted
            continue
        counts[code] = counts.get(code, 0.0) + value
    return counts


@dataclass(frozen=True)
class Measurement:
    """The canary's inference requests in the window, and those that failed (Prometheus' increase() estimates
    them from the scrapes, so they need not be whole)."""

    requests: float
    errors: float

    @property
    def error_percent(self) -> float:
        return 100.0 * self.errors / self.requests if self.requests > 0 else 0.0

    @classmethod
    def of(cls, counts: dict[str, float]) -> "Measurement":
        requests = sum(counts.values())
        errors = sum(value for code, value in counts.items() if is_server_error(code))
        return cls(requests, min(errors, requests))

    def describe(self, window_seconds: int) -> str:
        return (f"{self.errors:.0f} of {self.requests:.0f} canary requests ({self.error_percent:.1f}%) failed in "
                f"the last {window_seconds}s")


@dataclass(frozen=True)
class Decision:
    roll_back: bool
    verdict: Verdict  # the CanaryRolledBack condition it leaves


def decide(measurement: Measurement, rollback: CanaryRollbackSpec) -> Decision:
    """Roll back when at least minRequests arrived and more than maxErrorPercent of them failed."""
    window = rollback.window_seconds
    if round(measurement.requests) < rollback.min_requests:
        return Decision(False, Verdict(FALSE, TOO_FEW_REQUESTS, (
            f"{measurement.requests:.0f} canary requests in the last {window}s, fewer than minRequests "
            f"{rollback.min_requests}: not judged yet")))
    if measurement.error_percent > rollback.max_error_percent:
        return Decision(True, Verdict(TRUE, ERROR_RATE_EXCEEDED, (
            f"{measurement.describe(window)}, more than maxErrorPercent {rollback.max_error_percent:g}: the canary "
            "gets no traffic now; change spec.canary's model or trafficPercent to resume")))
    return Decision(False, Verdict(FALSE, WITHIN_THRESHOLD, (
        f"{measurement.describe(window)}, within maxErrorPercent {rollback.max_error_percent:g}")))


def unavailable_verdict(address: str, error: str, retry_in_s: float) -> Verdict:
    return Verdict(UNKNOWN, METRICS_UNAVAILABLE, (
        f"could not read the canary's error rate from Prometheus at {address}: {error}; nothing rolled back, "
        f"trying again in {retry_in_s:g}s")[:1000])


# ---- the record of a rollback (status.canary.rolledBack) ---------------------------------------------------


def rollback_record(canary_status: dict[str, Any], traffic_percent: int, measurement: Measurement, window_seconds: int,
                    time: str) -> dict[str, Any]:
    """What was rolled back (the candidate as status.canary shows it, at the spec's trafficPercent) and why."""
    return {
        "modelUri": canary_status.get("modelUri"),
        "modelDigest": canary_status.get("modelDigest"),
        "trafficPercent": traffic_percent,
        "errorPercent": round(measurement.error_percent, 2),
        "requests": round(measurement.requests, 1),
        "windowSeconds": window_seconds,
        "time": time,
    }


def rollback_holds(record: dict[str, Any] | None, canary: CanarySpec | None, model: ArtifactToServe | None) -> bool:
    """Whether a rollback still applies: spec.canary asks for the same trafficPercent of the same candidate (while
    the candidate is not resolved, say its CompressionJob runs again, only the percent is compared)."""
    if not record or canary is None or record.get("trafficPercent") != canary.traffic_percent:
        return False
    return model is None or (record.get("modelUri"), record.get("modelDigest")) == (model.uri, model.digest)


def rollback_conditions(conditions: list[dict[str, Any]], canary: CanarySpec | None, previous_record: dict | None,
                        held_record: dict | None, generation: int) -> list[dict[str, Any]]:
    """CanaryRolledBack as a full pass leaves it: gone without a canary, or without rollback settings and nothing
    held; True while a rollback holds; False (Resumed) once the spec moved past one. Evaluations set the rest."""
    current = find_condition(conditions, CANARY_ROLLED_BACK)
    if held_record is not None:
        if current is not None and current.get("status") == TRUE:
            return conditions
        return set_condition(conditions, CANARY_ROLLED_BACK, TRUE, ERROR_RATE_EXCEEDED, (
            f"{held_record.get('errorPercent')}% of {held_record.get('requests')} canary requests failed in "
            f"{held_record.get('windowSeconds')}s: the canary gets no traffic; change spec.canary's model or "
            "trafficPercent to resume"), generation=generation)
    if canary is None or (canary.rollback is None and previous_record is None):
        return [c for c in conditions if c.get("type") != CANARY_ROLLED_BACK]
    if previous_record is not None:
        return set_condition(conditions, CANARY_ROLLED_BACK, FALSE, RESUMED, (
            f"spec.canary changed since {previous_record.get('modelUri')} was rolled back at "
            f"{previous_record.get('trafficPercent')}%: the canary gets its share of the traffic again"),
            generation=generation)
    return conditions
