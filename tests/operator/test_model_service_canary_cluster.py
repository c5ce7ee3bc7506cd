"""Canary rollouts of a ModelService on the real control plane, with the operator as a process (kwok nodes:
pods become Ready at once).

The split by replica proportion (two Deployments, one Service selecting both), status, promotion and rollback
as spec edits, and the HTTPRoute a named Gateway gets, against Gateway API's own CRD.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from tests.cluster.helpers import apply, get, wait_established, wait_for
from tests.operator.test_model_service_cluster import model_service, status_of, wait_ready

pytestmark = pytest.mark.cluster

VERSION_LABEL = "slimserve.io/model-version"
STABLE_URI, CANDIDATE_URI = "builtin://digits-mlp", "builtin://digits-cnn"
# Gateway API's standard HTTPRoute CRD, from the module's config/crd (fetched into the Go module cache once).
GATEWAY_API_MODULE, GATEWAY_API_VERSION = "sigs.k8s.io/gateway-api", "v1.4.1"
HTTPROUTE_CRD = "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml"


def httproute_crd_path() -> Path:
    """The HTTPRoute CRD file in the Go module cache (downloaded through the module proxy the first time)."""
    found = subprocess.run(["go", "mod", "download", "-json", f"{GATEWAY_API_MODULE}@{GATEWAY_API_VERSION}"],
                           capture_output=True, text=True, timeout=300, check=True, cwd="/")
    return Path(json.loads(found.stdout)["Dir"]) / HTTPROUTE_CRD


@pytest.fixture(scope="module")
def httproute_crd(control_plane, crds) -> None:
    control_plane.kubectl("apply", "--server-side", "-f", str(httproute_crd_path()))
    wait_established(control_plane, "httproutes.gateway.networking.k8s.io")


def replicas_of(cp, namespace: str, name: str) -> int:
    return get(cp, namespace, "deployment", name)["spec"]["replicas"]


def deployments_named(cp, namespace: str) -> set[str]:
    return {d["metadata"]["name"] for d in get(cp, namespace, "deployments")["items"]}


def canary_settled(cp, namespace: str, name: str, stable: int, canary: int, percent: int):
    """status.canary once both sides run what `percent` asks for, all Ready."""
    def check():
        found = status_of(cp, namespace, name).get("canary") or {}
        settled = (found.get("stableReplicas"), found.get("readyReplicas"), found.get("trafficPercent"),
                   found.get("message")) == (stable, canary, percent, None)
        return settled and found
    return wait_for(f"{name}: canary at {percent}% ({stable} + {canary} replicas)", check, timeout=90)


class DeploymentWatch:
    """`kubectl get deployments --watch` in a namespace, its events parsed as they come."""

    def __init__(self, cp, namespace: str):
        self.events: list[dict] = []
        self._process = subprocess.Popen(
            [str(cp.bin_dir / "kubectl"), f"--kubeconfig={cp.kubeconfig}", "get", "-n", namespace, "deployments",
             "--watch", "--output-watch-events", "-o", "json"], stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        decoder, buffer = json.JSONDecoder(), ""
        for line in self._process.stdout:
            buffer += line
            try:
                event, end = decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                continue  # an event spans several lines
            self.events.append(event)
            buffer = buffer.lstrip()[end:]

    def index_of(self, type_: str, name: str) -> int | None:
        for index, event in enumerate(list(self.events)):
            if event["type"] == type_ and event["object"]["metadata"]["name"] == name:
                return index + 1  # truthy for wait_for; the events before it are [:index]
        return None

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)
        self._reader.join(timeout=10)


def edit_canary(cp, namespace: str, name: str, canary: dict | None) -> None:
    cp.kubectl("patch", "-n", namespace, "modelservice", name, "--type=merge", "-p", json.dumps({"spec": {"canary": canary}}))


def test_a_canary_at_20_percent_of_5_replicas_then_rolls_back_and_is_promoted(control_plane, operator, namespace):
    cp = control_plane
    candidate = {"model": {"uri": CANDIDATE_URI}, "trafficPercent": 20}
    apply(cp, namespace, model_service("digits", replicas=5, canary=candidate))
    wait_ready(cp, namespace, "digits")
    found = canary_settled(cp, namespace, "digits", 4, 1, 20)
    assert (found["modelUri"], found["replicas"]) == (CANDIDATE_URI, 1)
    assert (replicas_of(cp, namespace, "digits"), replicas_of(cp, namespace, "digits-canary")) == (4, 1)
    # One Service selects the pods of both versions: the split is the replica proportion.
    selector = get(cp, namespace, "service", "digits")["spec"]["selector"]
    pods = get(cp, namespace, "pods", "-l", ",".join(f"{k}={v}" for k, v in selector.items()))["items"]
    versions = sorted(p["metadata"]["labels"][VERSION_LABEL] for p in pods)
    assert versions == ["canary"] + ["stable"] * 4
    for pod in pods:
        (server,) = pod["spec"]["containers"]
        version = pod["metadata"]["labels"][VERSION_LABEL]
        assert {"name": "SLIMSERVE_MODEL_VERSION", "value": version} in server["env"]
        uri = CANDIDATE_URI if version == "canary" else STABLE_URI
        assert pod["metadata"]["annotations"]["slimserve.io/model-uri"] == uri
    # The canary's Deployment selects only its own pods; the stable's, older than any canary, all the server's.
    assert get(cp, namespace, "deployment", "digits-canary")["spec"]["selector"]["matchLabels"][VERSION_LABEL] == "canary"

    # Roll back with trafficPercent 0: the stable side is back to 5, the canary's Deployment stays at 0.
    edit_canary(cp, namespace, "digits", {**candidate, "trafficPercent": 0})
    canary_settled(cp, namespace, "digits", 5, 0, 0)
    assert (replicas_of(cp, namespace, "digits"), replicas_of(cp, namespace, "digits-canary")) == (5, 0)

    # Promote: all traffic to the candidate, then the candidate moved into spec.model and the canary removed.
    edit_canary(cp, namespace, "digits", {**candidate, "trafficPercent": 100})
    canary_settled(cp, namespace, "digits", 0, 5, 100)
    cp.kubectl("patch", "-n", namespace, "modelservice", "digits", "--type=merge",
               "-p", json.dumps({"spec": {"model": {"uri": CANDIDATE_URI}, "canary": None}}))
    wait_for("the canary's Deployment deleted once the stable serves the candidate",
             lambda: deployments_named(cp, namespace) == {"digits"}, timeout=90)
    wait_for("status.canary gone", lambda: "canary" not in status_of(cp, namespace, "digits"))
    wait_ready(cp, namespace, "digits")
    status = status_of(cp, namespace, "digits")
    assert (status["modelUri"], status["readyReplicas"]) == (CANDIDATE_URI, 5)
    template = get(cp, namespace, "deployment", "digits")["spec"]["template"]
    assert VERSION_LABEL not in template["metadata"]["labels"]  # no canary: the pods carry no version


def test_removing_the_canary_scales_the_stable_up_before_the_canary_goes(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, model_service("embed", replicas=2, canary={"model": {"uri": CANDIDATE_URI}, "trafficPercent": 50}))
    canary_settled(cp, namespace, "embed", 1, 1, 50)
    # Watch both Deployments from here: the canary's may go only once the stable has 2 Ready replicas again.
    watch = DeploymentWatch(cp, namespace)
    try:
        edit_canary(cp, namespace, "embed", None)
        deleted = wait_for("the canary's Deployment deleted", lambda: watch.index_of("DELETED", "embed-canary"), timeout=90)
    finally:
        watch.stop()
    # Removing the canary also rolls the stable pods (they no longer carry a version): rolled out means all 2
    # updated and available, the old ones gone.
    stable = [e["object"] for e in watch.events[:deleted] if e["object"]["metadata"]["name"] == "embed"]
    rolled_out = [d for d in stable if d["spec"]["replicas"] == 2 and all(
        (d.get("status") or {}).get(field, 0) == 2 for field in ("replicas", "updatedReplicas", "availableReplicas"))]
    assert rolled_out, [d.get("status") for d in stable]
    # The status write follows the deletion (the next pass sees the Deployment gone).
    wait_for("status.canary gone", lambda: "canary" not in status_of(cp, namespace, "embed"))


def test_a_named_gateway_gets_an_httproute_with_weighted_backends(control_plane, operator, httproute_crd, namespace):
    cp = control_plane
    gateway = {"name": "public", "namespace": "infra", "sectionName": "http"}
    apply(cp, namespace, model_service("ranker", replicas=5, canary={"model": {"uri": CANDIDATE_URI},
                                                                     "trafficPercent": 20, "gateway": gateway}))
    canary_settled(cp, namespace, "ranker", 4, 1, 20)
    route = get(cp, namespace, "httproute", "ranker")
    assert route["metadata"]["ownerReferences"][0]["kind"] == "ModelService"
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public",
                                            "namespace": "infra", "sectionName": "http"}]
    (rule,) = route["spec"]["rules"]
    assert [(b["name"], b["port"], b["weight"]) for b in rule["backendRefs"]] == [
        ("ranker-stable", 8080, 80), ("ranker-canary", 8080, 20)]
    for version in ("stable", "canary"):
        selector = get(cp, namespace, "service", f"ranker-{version}")["spec"]["selector"]
        pods = get(cp, namespace, "pods", "-l", ",".join(f"{k}={v}" for k, v in selector.items()))["items"]
        assert {p["metadata"]["labels"][VERSION_LABEL] for p in pods} == {version}
        assert len(pods) == (4 if version == "stable" else 1)

    edit_canary(cp, namespace, "ranker", {"model": {"uri": CANDIDATE_URI}, "trafficPercent": 0, "gateway": gateway})
    wait_for("all of the route's weight on the stable Service",
             lambda: [b["weight"] for b in get(cp, namespace, "httproute", "ranker")["spec"]["rules"][0]["backendRefs"]]
             == [100, 0])
    edit_canary(cp, namespace, "ranker", None)
    wait_for("the route and the per-version Services deleted with the canary",
             lambda: not get(cp, namespace, "httproutes")["items"]
             and {s["metadata"]["name"] for s in get(cp, namespace, "services")["items"]} == {"ranker"}, timeout=90)
