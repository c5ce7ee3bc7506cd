"""A ModelService's canary as pure functions: the replica split, the order in which the two sides change, and
the manifests (candidate Deployment, per-version Services, HTTPRoute)."""

from __future__ import annotations

import pytest

from slimserve.api.model_service import ModelServiceSpec
from slimserve.controller.builders import canary as c
from slimserve.controller.builders import model_service as b
from slimserve.controller.config import OperatorConfig
from tests.operator.conftest import TEST_OPERATOR_CONFIG

CONFIG = OperatorConfig.model_validate(TEST_OPERATOR_CONFIG)
POOL = CONFIG.node_pool("cpu")
OWNER = b.Owner(name="digits", namespace="team-a", uid="0b7c-uid")
STABLE_MODEL = b.ArtifactToServe("builtin://digits-mlp")
CANDIDATE = b.ArtifactToServe("s3://artifacts/digits-int8", "sha256:" + "ab" * 32)


def spec(percent: int = 20, **fields) -> ModelServiceSpec:
    canary = {"model": {"uri": CANDIDATE.uri}, "trafficPercent": percent, **fields.pop("canary", {})}
    return ModelServiceSpec.from_json({"model": {"uri": STABLE_MODEL.uri}, "replicas": 5, "canary": canary, **fields})


@pytest.mark.parametrize(("total", "percent", "split"), [
    (5, 20, (4, 1)), (5, 0, (5, 0)), (5, 100, (0, 5)), (4, 50, (2, 2)), (5, 50, (3, 2)), (1, 20, (1, 1)),
    (10, 5, (10, 1)), (3, 99, (0, 3)),
])
def test_the_replica_proportion_rounds_the_stable_side_and_gives_a_canary_at_least_one(total, percent, split):
    assert c.split_replicas(total, percent) == split


def test_beside_an_autoscaler_the_canary_follows_the_stable_replicas_within_the_maximum():
    assert [c.follower_replicas(4, p, 8) for p in (0, 20, 50, 100)] == [0, 1, 4, 4]
    assert c.follower_replicas(6, 90, 8) == 8  # 54 wanted, the maximum is 8


READY_4, READY_5 = c.Side(4, True, 4), c.Side(5, True, 5)


def test_adding_a_canary_holds_the_stable_replicas_until_the_canary_is_ready():
    held = c.plan_replicas(4, 1, READY_5, None, canary_in_spec=True)
    assert (held.stable, held.canary) == (5, 1) and "canary" in held.waiting
    starting = c.plan_replicas(4, 1, READY_5, c.Side(1, False, 0), canary_in_spec=True)
    assert (starting.stable, starting.canary, bool(starting.waiting)) == (5, 1, True)
    done = c.plan_replicas(4, 1, READY_5, c.Side(1, True, 1), canary_in_spec=True)
    assert (done.stable, done.canary, done.waiting) == (4, 1, None)


def test_rolling_back_keeps_the_canary_until_the_stable_side_is_ready():
    held = c.plan_replicas(5, 0, READY_4, c.Side(1, True, 1), canary_in_spec=True)
    assert (held.stable, held.canary) == (5, 1) and "stable" in held.waiting
    done = c.plan_replicas(5, 0, READY_5, c.Side(1, True, 1), canary_in_spec=True)
    assert (done.stable, done.canary, done.waiting) == (5, 0, None)


def test_a_removed_canary_is_left_as_it_is_until_the_stable_side_is_ready_then_deleted():
    held = c.plan_replicas(5, 0, c.Side(5, False, 4), c.Side(0, True, 0), canary_in_spec=False)
    assert (held.stable, held.canary) == (5, None) and held.waiting
    assert c.plan_replicas(5, 0, READY_5, c.Side(0, True, 0), canary_in_spec=False).canary == 0


def test_a_new_service_with_a_canary_starts_both_sides_at_once():
    plan = c.plan_replicas(4, 1, None, None, canary_in_spec=True)
    assert (plan.stable, plan.canary, plan.waiting) == (4, 1, None)


def test_the_candidates_deployment_has_its_own_name_selector_version_and_model():
    deployment = c.build_canary_deployment(OWNER, spec(), CANDIDATE, POOL, CONFIG, replicas=1)
    assert deployment["metadata"]["name"] == "digits-canary"
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert deployment["spec"]["selector"]["matchLabels"] == {**b.selector_of(OWNER), c.VERSION_LABEL: "canary"}
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"][c.VERSION_LABEL] == "canary"
    assert template["metadata"]["annotations"][b.URI_ANNOTATION] == CANDIDATE.uri
    assert template["metadata"]["annotations"][b.DIGEST_ANNOTATION] == CANDIDATE.digest
    (server,) = template["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert (env["SLIMSERVE_ARTIFACT"], env["SLIMSERVE_MODEL_VERSION"]) == (CANDIDATE.uri, "canary")
    assert env["SLIMSERVE_MODEL_NAME"] == "digits"  # the same protocol path as the stable's


def test_the_stable_pods_carry_a_version_only_while_a_canary_runs():
    with_canary = b.build_deployment(OWNER, spec(), STABLE_MODEL, POOL, CONFIG, replicas=4)["spec"]["template"]
    assert with_canary["metadata"]["labels"][c.VERSION_LABEL] == "stable"
    without = ModelServiceSpec.from_json({"model": {"uri": STABLE_MODEL.uri}, "replicas": 5})
    template = b.build_deployment(OWNER, without, STABLE_MODEL, POOL, CONFIG, replicas=5)["spec"]["template"]
    assert c.VERSION_LABEL not in template["metadata"]["labels"]
    assert "SLIMSERVE_MODEL_VERSION" not in {e["name"] for e in template["spec"]["containers"][0]["env"]}


def test_the_httproute_splits_between_the_version_services_by_weight():
    canary = spec(canary={"gateway": {"name": "public"}}).canary
    route = c.build_http_route(OWNER, canary, (80, 20))
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}]
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"name": "digits-stable", "port": b.HTTP_PORT, "weight": 80},
        {"name": "digits-canary", "port": b.HTTP_PORT, "weight": 20},
    ]
    service = c.build_version_service(OWNER, "stable", tls=False)
    assert service["spec"]["selector"] == {**b.selector_of(OWNER), c.VERSION_LABEL: "stable"}


@pytest.mark.parametrize(("fields", "message"), [
    ({"canary": {"model": {"uri": STABLE_MODEL.uri}, "trafficPercent": 20}}, "spec.canary.model"),
    ({"canary": {"model": {"uri": CANDIDATE.uri}, "trafficPercent": 20},
      "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "metric": "concurrency"}}, "spec.canary"),
    ({"canary": {"model": {"uri": CANDIDATE.uri}, "trafficPercent": 100},
      "autoscaling": {"minReplicas": 1, "maxReplicas": 3}}, "spec.canary.trafficPercent"),
])
def test_canaries_the_operator_cannot_run_are_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelServiceSpec.from_json({"model": {"uri": STABLE_MODEL.uri}, **fields})
