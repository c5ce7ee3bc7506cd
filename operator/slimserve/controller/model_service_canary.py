"""A ModelService's canary within a full pass: the candidate's model, the replicas of both Deployments in a
safe order, the canary's children and its part of the status.

Level-based like the rest of the pass: each pass reads both Deployments, asks the side gaining replicas for its
target and holds the other until that side is Ready (`plan_replicas`); while it holds, the pass ends with
`CanaryWaiting` and runs again after a short delay. The traffic split follows what is Ready: an HTTPRoute sends
nothing to a side without Ready pods, and without a Gateway the share is that of the Ready pods. A rollback the
operator made on the canary's error rate (status.canary.rolledBack, see `canary_rollback`) counts as
trafficPercent 0 while the spec still asks for what was rolled back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import kopf
from kubernetes import client

from slimserve.api.model_service import ModelReference, ModelServiceSpec
from slimserve.controller import kube
from slimserve.controller.builders.canary import (
    HTTPROUTE_API_VERSION,
    ReplicaPlan,
    Side,
    build_canary_deployment,
    build_http_route,
    build_version_service,
    canary_name,
    follower_replicas,
    plan_replicas,
    split_replicas,
    stable_service_name,
)
from slimserve.controller.builders.model_service import (
    CANARY,
    STABLE,
    VERSION_LABEL,
    ChildRef,
    Children,
    Owner,
)
from slimserve.controller.canary_rollback import rollback_conditions, rollback_holds
from slimserve.controller.config import NodePool, OperatorConfig
from slimserve.controller.model_service_status import ModelResolution, evaluate_rollout

# How soon a pass holding one side's replicas looks again whether the other side is Ready.
WAIT_SECONDS = 2.0


class CanaryWaiting(kopf.TemporaryError):
    """The side gaining traffic is not Ready yet: the other keeps its replicas; the pass runs again soon."""


@dataclass(frozen=True)
class CanaryPass:
    """What this pass found and decided about the canary."""

    in_spec: bool
    percent: int  # spec.canary.trafficPercent (0 without a canary, or while a rollback holds)
    resolution: ModelResolution | None  # the candidate's, while spec.canary is set
    plan: ReplicaPlan
    stable: Side | None
    canary: Side | None
    canary_live: dict[str, Any] | None
    previous_rollback: dict[str, Any] | None = None  # status.canary.rolledBack as this pass found it
    rollback: dict[str, Any] | None = None  # the same, while it still holds

    @property
    def weights(self) -> tuple[int, int]:
        """(stable, canary) share of the traffic to route now: nothing to a side that has no Ready pods."""
        if not self.in_spec or self.resolution is None or self.resolution.model is None:
            return 100, 0
        percent = self.percent
        if percent > 0 and not _serving(self.canary):
            return 100, 0
        if percent < 100 and not _serving(self.stable) and _serving(self.canary):
            return 0, 100
        return 100 - percent, percent


def _serving(side: Side | None) -> bool:
    return side is not None and side.ready_replicas > 0


def _deployment(api: client.ApiClient, owner: Owner, name: str) -> dict[str, Any] | None:
    live, _ = kube.read_named(api, {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "metadata": {"name": name, "namespace": owner.namespace}})
    return live if live is not None and kube.controller_uid(live) == owner.uid else None


def side_of(deployment: dict[str, Any] | None) -> Side | None:
    if deployment is None:
        return None
    replicas = (deployment.get("spec") or {}).get("replicas", 1)
    ready = (deployment.get("status") or {}).get("readyReplicas", 0)
    return Side(replicas, evaluate_rollout(deployment).verdict.true, ready)


def had_canary(previous_status: dict[str, Any]) -> bool:
    return bool(previous_status.get("canary"))


def plan_pass(
    api: client.ApiClient,
    owner: Owner,
    spec: ModelServiceSpec,
    stable_replicas: int | None,
    previous_status: dict[str, Any],
    resolve: Callable[[ModelReference], ModelResolution],
) -> CanaryPass | None:
    """The canary's part of this pass; None when the service has no canary and had none (nothing is read).

    `stable_replicas`: what the stable Deployment runs without a canary (None: an autoscaler's).
    """
    in_spec = spec.canary is not None
    if not in_spec and not had_canary(previous_status):
        return None
    stable_live = _deployment(api, owner, owner.child_name)
    canary_live = _deployment(api, owner, canary_name(owner))
    stable, canary = side_of(stable_live), side_of(canary_live)
    resolution = resolve(spec.canary.model) if in_spec else None
    previous_rollback = (previous_status.get("canary") or {}).get("rolledBack")
    held = previous_rollback if rollback_holds(previous_rollback, spec.canary, resolution and resolution.model) else None
    percent = 0 if not in_spec or held else spec.canary.traffic_percent
    if resolution is not None and resolution.model is None:
        # No candidate yet (its CompressionJob runs): the stable serves everything, an earlier canary stays.
        plan = ReplicaPlan(stable_replicas, None)
    else:
        target_stable, target_canary = targets(spec, stable_replicas, stable, percent)
        plan = plan_replicas(target_stable, target_canary, stable, canary, canary_in_spec=in_spec)
    return CanaryPass(in_spec, percent, resolution, plan, stable, canary, canary_live, previous_rollback, held)


def targets(spec: ModelServiceSpec, stable_replicas: int | None, stable: Side | None,
            percent: int) -> tuple[int | None, int]:
    """(stable, canary) replicas to reach for a canary share of `percent`: a split of the spec's replicas, or
    beside the autoscaler's."""
    if spec.canary is None:
        return stable_replicas, 0
    if stable_replicas is None:
        running = stable.replicas if stable else 1
        return None, follower_replicas(running, percent, spec.autoscaling.max_replicas)
    return split_replicas(stable_replicas, percent)


def canary_children(owner: Owner, spec: ModelServiceSpec, found: CanaryPass, pool: NodePool,
                    config: OperatorConfig) -> Children:
    """The canary's children to apply, and those to delete (read first: no index covers them)."""
    children = Children()
    tls = spec.tls is not None
    model = found.resolution.model if found.resolution else None
    if found.in_spec and model is not None and found.plan.canary is not None:
        children.apply.append(build_canary_deployment(owner, spec, model, pool, config, replicas=found.plan.canary))
    elif not found.in_spec and found.plan.canary == 0:
        children.delete.append(ChildRef("apps/v1", "Deployment", canary_name(owner), look=True))
    gateway_children = [ChildRef("v1", "Service", stable_service_name(owner), look=True),
                        ChildRef("v1", "Service", canary_name(owner), look=True),
                        ChildRef(HTTPROUTE_API_VERSION, "HTTPRoute", owner.child_name, look=True)]
    if found.in_spec and spec.canary.gateway is not None and model is not None:
        children.apply += [build_version_service(owner, STABLE, tls), build_version_service(owner, CANARY, tls),
                           build_http_route(owner, spec.canary, found.weights)]
    elif not found.in_spec or spec.canary.gateway is None:
        children.delete += gateway_children
    return children


def canary_status(spec: ModelServiceSpec, found: CanaryPass) -> dict[str, Any] | None:
    """status.canary: the candidate, its replicas, and the share of the traffic it gets now. Once spec.canary is
    removed, only while its Deployment waits for the stable side (so that the next pass still looks at it)."""
    status = (found.canary_live or {}).get("status") or {}
    if not found.in_spec:
        if found.canary_live is None or found.plan.canary == 0:
            return None
        return {"replicas": status.get("replicas", 0), "readyReplicas": status.get("readyReplicas", 0),
                "stableReplicas": found.plan.stable, "trafficPercent": ready_share(found),
                "message": found.plan.waiting or "removing the canary"}
    resolution = found.resolution
    model = resolution.model if resolution else None
    share = found.weights[1] if spec.canary.gateway is not None else ready_share(found)
    message = found.plan.waiting or ("" if model is not None else resolution.verdict.message)
    if not message and found.rollback is not None:
        message = "rolled back on its error rate (condition CanaryRolledBack)"
    return {
        "modelUri": model.uri if model else None,
        "modelDigest": model.digest if model else None,
        "replicas": status.get("replicas", 0),
        "readyReplicas": status.get("readyReplicas", 0),
        "stableReplicas": found.plan.stable,
        "trafficPercent": share,
        "message": message or None,
        "rolledBack": found.rollback,
    }


def with_canary_status(status: dict[str, Any], spec: ModelServiceSpec, found: CanaryPass) -> dict[str, Any]:
    """`status` with status.canary and the CanaryRolledBack condition of this pass; while spec.canary is set, the
    scale subresource's selector (status.selector) selects the stable pods only (they carry the version label
    then), so that an autoscaler aimed at the ModelService measures the model the replicas are for."""
    conditions = rollback_conditions(status.get("conditions") or [], spec.canary, found.previous_rollback,
                                     found.rollback, status.get("observedGeneration") or 0)
    updated = {**status, "canary": canary_status(spec, found), "conditions": sorted(conditions, key=lambda c: c["type"])}
    if found.in_spec and status.get("selector"):
        updated["selector"] = f"{status['selector']},{VERSION_LABEL}={STABLE}"
    return updated


def keep_canary_status(previous: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """`status` from a pass that does not look at the canary (the status-only pass) with the canary's part of
    `previous` kept: status.canary (and a rollback it records) and the stable-only selector."""
    if not previous.get("canary"):
        return status
    return {**status, "canary": previous["canary"], "selector": previous.get("selector", status.get("selector"))}


def ready_share(found: CanaryPass) -> int:
    """The canary's percent of the Ready pods behind the one Service, as this pass found them."""
    stable = found.stable.ready_replicas if found.stable else 0
    canary = found.canary.ready_replicas if found.canary else 0
    return round(100 * canary / (stable + canary)) if stable + canary else 0


def raise_if_waiting(found: CanaryPass | None) -> None:
    if found is not None and found.plan.waiting:
        raise CanaryWaiting(found.plan.waiting, delay=WAIT_SECONDS)
