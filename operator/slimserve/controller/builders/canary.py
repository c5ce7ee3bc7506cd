"""Manifests of a ModelService's canary: the candidate's Deployment, a Service per version and the HTTPRoute
when a Gateway is named, and the replicas of each side.

Pure functions. The one Service of the ModelService selects the pods of both versions, so without a Gateway
the traffic splits by replica proportion; with one, an HTTPRoute splits it by weight between the per-version
Services. `plan_replicas` says what each Deployment runs in this pass: the side gaining replicas goes first,
the other gives them up only once that side is Ready (see docs/canary.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slimserve.api.model_service import GATEWAY_API_GROUP, CanarySpec, ModelServiceSpec
from slimserve.controller.builders.model_service import (
    CANARY,
    HTTP_PORT,
    STABLE,
    VERSION_LABEL,
    ArtifactToServe,
    Owner,
    build_deployment,
    build_service,
    child_metadata,
    child_name,
    selector_of,
)
from slimserve.controller.config import NodePool, OperatorConfig

HTTPROUTE_API_VERSION = f"{GATEWAY_API_GROUP}/v1"


def canary_name(owner: Owner) -> str:
    """The canary Deployment's (and its Service's) name: `<name>-canary`, a DNS-1035 label."""
    return child_name(f"{owner.name}-{CANARY}")


def stable_service_name(owner: Owner) -> str:
    return child_name(f"{owner.name}-{STABLE}")


def version_selector(owner: Owner, version: str) -> dict[str, str]:
    return {**selector_of(owner), VERSION_LABEL: version}


# ---- replicas -----------------------------------------------------------------------------------------


def split_replicas(total: int, percent: int) -> tuple[int, int]:
    """(stable, canary) of `total` for a canary share of `percent`: stable = round(total*(100-percent)/100),
    halves rounded up, the canary the rest and at least one when percent > 0."""
    stable = (total * (100 - percent) + 50) // 100
    canary = total - stable
    if percent > 0 and canary == 0:
        canary = 1
    return stable, canary


def follower_replicas(stable: int, percent: int, most: int) -> int:
    """Canary replicas beside `stable` replicas an autoscaler runs, for a share of `percent` (at most `most`)."""
    if percent == 0:
        return 0
    if percent == 100:
        return min(max(stable, 1), most)
    return min(max((stable * percent + (100 - percent) // 2) // (100 - percent), 1), most)


@dataclass(frozen=True)
class Side:
    """One Deployment as the pass found it: the replicas it was asked for, whether they are all Ready (rolled
    out), and how many pods are Ready."""

    replicas: int
    ready: bool
    ready_replicas: int = 0


@dataclass(frozen=True)
class ReplicaPlan:
    """What each Deployment is asked for in this pass; `waiting` says why the split is not the target yet.

    `stable` None leaves the stable Deployment's replicas to its autoscaler; `canary` None leaves the canary
    Deployment as it is (kept while the stable scales up after the canary was removed); 0 with the canary out of
    the spec deletes it."""

    stable: int | None
    canary: int | None
    waiting: str | None = None


def plan_replicas(target_stable: int | None, target_canary: int, stable: Side | None, canary: Side | None,
                  *, canary_in_spec: bool) -> ReplicaPlan:
    """Scale up the side gaining replicas first; the other side gives its replicas up once that one is Ready.

    `canary_in_spec` False: the canary is being removed (`target_canary` 0; the plan's `canary` 0 deletes it).
    `target_stable` None: an autoscaler owns the stable replicas.
    """
    def up(target: int | None, side: Side | None) -> bool:
        return not target or (side is not None and side.replicas >= target and side.ready)

    current_stable = stable.replicas if stable else 0
    current_canary = canary.replicas if canary else 0
    losing = [name for name, target, current in ((STABLE, target_stable, current_stable),
                                                 (CANARY, target_canary, current_canary))
              if target is not None and target < current]
    if not canary_in_spec and canary is not None and CANARY not in losing:
        losing.append(CANARY)  # a canary at 0 replicas still goes only after the stable is up
    gaining = [name for name, target, side in ((STABLE, target_stable, stable), (CANARY, target_canary, canary))
               if not up(target, side)]
    if not losing or not gaining:
        return ReplicaPlan(target_stable, target_canary)
    held_stable = None if target_stable is None else max(target_stable, current_stable)
    held_canary = max(target_canary, current_canary) if canary_in_spec else None
    waiting = f"waiting for {' and '.join(gaining)} to be Ready before scaling {' and '.join(losing)} down"
    return ReplicaPlan(held_stable, held_canary, waiting)


# ---- manifests ----------------------------------------------------------------------------------------


def canary_spec_of(spec: ModelServiceSpec) -> ModelServiceSpec:
    """The service's spec as the candidate's pods see it: the candidate in spec.model."""
    return spec.model_copy(update={"model": spec.canary.model})


def build_canary_deployment(owner: Owner, spec: ModelServiceSpec, model: ArtifactToServe, pool: NodePool,
                            config: OperatorConfig, *, replicas: int) -> dict[str, Any]:
    """The candidate's Deployment: the stable one's pod template with the candidate's model and version label."""
    deployment = build_deployment(owner, canary_spec_of(spec), model, pool, config, replicas=replicas, version=CANARY)
    deployment["metadata"] = child_metadata(owner, canary_name(owner), {VERSION_LABEL: CANARY})
    deployment["spec"]["selector"] = {"matchLabels": version_selector(owner, CANARY)}
    return deployment


def build_version_service(owner: Owner, version: str, tls: bool) -> dict[str, Any]:
    """A Service of one version's pods: an HTTPRoute backend."""
    name = canary_name(owner) if version == CANARY else stable_service_name(owner)
    service = build_service(owner, tls=tls)
    service["metadata"] = child_metadata(owner, name, {VERSION_LABEL: version})
    service["spec"]["selector"] = version_selector(owner, version)
    return service


def build_http_route(owner: Owner, canary: CanarySpec, weights: tuple[int, int]) -> dict[str, Any]:
    """An HTTPRoute on the named Gateway splitting the requests by `weights` (stable, canary): trafficPercent
    once both sides have Ready pods."""
    gateway = canary.gateway
    parent: dict[str, Any] = {"group": GATEWAY_API_GROUP, "kind": "Gateway", "name": gateway.name}
    if gateway.namespace:
        parent["namespace"] = gateway.namespace
    if gateway.section_name:
        parent["sectionName"] = gateway.section_name
    backends = [
        {"name": stable_service_name(owner), "port": HTTP_PORT, "weight": weights[0]},
        {"name": canary_name(owner), "port": HTTP_PORT, "weight": weights[1]},
    ]
    return {
        "apiVersion": HTTPROUTE_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": child_metadata(owner, owner.child_name),
        "spec": {"parentRefs": [parent], "rules": [{"backendRefs": backends}]},
    }
