"""A ModelService's children on the real control plane, with the operator as a process: it takes nothing it
does not control, two services never share children, every refused apply reaches status, hand edits are undone.
"""

from __future__ import annotations

import json

import pytest

from slimserve.controller.builders.model_service import child_name
from tests.cluster.helpers import apply, condition, events_of, exists, get, wait_for
from tests.operator.test_model_service_cluster import model_service, status_of, wait_condition, wait_ready

pytestmark = pytest.mark.cluster


def retried(operator, namespace: str, name: str, delay: str = "4s") -> bool:
    """Whether the operator logged the retry of a refused pass after `delay` (the second retry: it grows)."""
    return any(f"{namespace}/{name}: " in line and f"retrying in {delay}" in line for line in operator.logs().splitlines())


def warnings_of(cp, namespace: str, name: str) -> set[str]:
    return {reason for type_, reason, _ in events_of(cp, namespace, name, "ModelService") if type_ == "Warning"}


# ---- objects someone else made --------------------------------------------------------------------------

HAND_MADE = {
    "Service": {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "digits"},
                "spec": {"selector": {"app": "mine"}, "ports": [{"name": "web", "port": 80}]}},
    "Deployment": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "digits"},
                   "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "mine"}},
                            "template": {"metadata": {"labels": {"app": "mine"}},
                                         "spec": {"containers": [{"name": "web", "image": "registry.test/web"}]}}}},
    "HorizontalPodAutoscaler": {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                                "metadata": {"name": "digits"},
                                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                                            "name": "mine"}, "minReplicas": 1, "maxReplicas": 2}},
}
# A child of the ModelService that the garbage collector removes with it, other than the hand-made kind.
COLLECTED_WITH_IT = {"Service": "deployment", "Deployment": "service", "HorizontalPodAutoscaler": "deployment"}


def untouched(before: dict, after: dict) -> bool:
    """What the operator would change, as it was; its controllers may write status (a new resourceVersion)."""
    return (
        after["metadata"]["uid"] == before["metadata"]["uid"]
        and after["spec"] == before["spec"]
        and after["metadata"].get("labels") == before["metadata"].get("labels")
        and "ownerReferences" not in after["metadata"]
        and not any(e["manager"].startswith("slimserve") for e in after["metadata"]["managedFields"])
    )


@pytest.mark.parametrize("kind", sorted(HAND_MADE))
def test_an_object_made_by_hand_is_neither_changed_nor_deleted(control_plane, operator, namespace, kind):
    cp = control_plane
    cp.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(HAND_MADE[kind]))
    theirs = get(cp, namespace, kind.lower(), "digits", "--show-managed-fields")
    autoscaling = {"metric": "cpu", "minReplicas": 1, "maxReplicas": 3} if kind == "HorizontalPodAutoscaler" else None
    apply(cp, namespace, model_service("digits", **({"autoscaling": autoscaling} if autoscaling else {"replicas": 2})))

    ready = wait_condition(cp, namespace, "digits", "Ready", "False", "ChildConflict")
    assert f"{kind} {namespace}/digits exists" in ready["message"]
    assert 'no controller (made by field manager "kubectl-create")' in ready["message"]
    assert condition(status_of(cp, namespace, "digits"), "Stalled")["status"] == "True"
    assert "url" not in status_of(cp, namespace, "digits")
    wait_for("a ChildConflict Event", lambda: "ChildConflict" in warnings_of(cp, namespace, "digits"))
    # A retry after the back-off leaves it alone too.
    wait_for("a retry", lambda: retried(operator, namespace, "digits"))
    assert untouched(theirs, get(cp, namespace, kind.lower(), "digits", "--show-managed-fields"))
    if kind == "Deployment":  # no autoscaler of the service's may scale someone else's Deployment
        assert not exists(cp, namespace, "hpa", "digits")

    cp.kubectl("delete", "-n", namespace, "msvc", "digits", "--wait=true")
    other = COLLECTED_WITH_IT[kind]
    wait_for(f"the ModelService's {other} collected", lambda: not exists(cp, namespace, other, "digits"))
    assert untouched(theirs, get(cp, namespace, kind.lower(), "digits", "--show-managed-fields"))
    if kind == "Service":  # nothing writes a Service but its users
        after = get(cp, namespace, "service", "digits")
        assert after["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]


def test_the_service_recovers_once_the_conflicting_object_is_gone(control_plane, operator, namespace):
    cp = control_plane
    cp.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(HAND_MADE["Service"]))
    apply(cp, namespace, model_service("digits"))
    wait_condition(cp, namespace, "digits", "Ready", "False", "ChildConflict")

    cp.kubectl("delete", "-n", namespace, "service", "digits")
    wait_ready(cp, namespace, "digits", timeout=90)  # the next retry of the back-off
    status = status_of(cp, namespace, "digits")
    assert condition(status, "Stalled")["status"] == "False"
    assert status["url"] == f"http://digits.{namespace}.svc.cluster.local:8080"
    assert get(cp, namespace, "service", "digits")["metadata"]["ownerReferences"][0]["name"] == "digits"


# ---- names ----------------------------------------------------------------------------------------------


def test_names_that_once_mapped_to_one_child_name_get_children_of_their_own(control_plane, operator, namespace):
    cp = control_plane
    pairs = [("my.model", "my-model"), ("1digits", "msvc-1digits")]
    names = [name for pair in pairs for name in pair]
    model_of = {name: f"model-{i}" for i, name in enumerate(names)}
    apply(cp, namespace, *(model_service(name, modelName=model_of[name]) for name in names))
    wait_ready(cp, namespace, *names)

    urls = {status_of(cp, namespace, name)["url"] for name in names}
    assert len(urls) == len(names)
    for name in names:
        child = child_name(name)
        assert status_of(cp, namespace, name)["url"] == f"http://{child}.{namespace}.svc.cluster.local:8080"
        service = get(cp, namespace, "service", child)
        assert service["metadata"]["ownerReferences"][0]["name"] == name
        pods = get(cp, namespace, "pods", "-l", ",".join(f"{k}={v}" for k, v in service["spec"]["selector"].items()))
        assert pods["items"], f"the Service of {name} selects no pods"
        for pod in pods["items"]:  # the Service selects the pods of this ModelService, serving its model
            (server,) = pod["spec"]["containers"]
            env = {item["name"]: item.get("value") for item in server["env"]}
            assert env["SLIMSERVE_MODEL_NAME"] == model_of[name]


# ---- refused applies ------------------------------------------------------------------------------------


def test_a_refused_apply_reaches_status_and_clears_once_fixed(control_plane, operator, namespace):
    cp = control_plane
    below = {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}
    apply(cp, namespace, model_service("greedy", resources=below))

    ready = wait_condition(cp, namespace, "greedy", "Ready", "False", "ApplyRejected")
    assert "Deployment greedy" in ready["message"] and "422" in ready["message"]
    assert "must be less than or equal to cpu limit" in ready["message"]
    assert condition(status_of(cp, namespace, "greedy"), "Stalled")["reason"] == "ApplyRejected"
    wait_for("an ApplyRejected Event", lambda: "ApplyRejected" in warnings_of(cp, namespace, "greedy"))
    wait_for("retries backing off", lambda: retried(operator, namespace, "greedy"))

    cp.kubectl("patch", "-n", namespace, "msvc", "greedy", "--type=merge",
               "-p", json.dumps({"spec": {"resources": {"limits": {"cpu": "2"}}}}))
    wait_ready(cp, namespace, "greedy")
    status = status_of(cp, namespace, "greedy")
    assert condition(status, "Ready")["reason"] == "Available"
    assert condition(status, "Stalled")["status"] == "False"


# ---- drift ----------------------------------------------------------------------------------------------


def test_hand_edits_of_the_service_by_other_field_managers_are_undone(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, namespace, model_service("sturdy"))
    wait_ready(cp, namespace, "sturdy")
    original = get(cp, namespace, "service", "sturdy")["spec"]

    def restored():
        spec = get(cp, namespace, "service", "sturdy")["spec"]
        return spec["ports"] == original["ports"] and spec["selector"] == original["selector"]

    edits = {
        "a port changed": {"spec": {"ports": [{**original["ports"][0], "port": 8081}, original["ports"][1]]}},
        "the selector changed": {"spec": {"selector": {"app.kubernetes.io/instance": "someone-else", "extra": "x"}}},
        "a port removed": {"spec": {"ports": [original["ports"][0]]}},
    }
    for what, patch in edits.items():
        edited = json.loads(cp.kubectl("patch", "-n", namespace, "service", "sturdy", "--type=merge",
                                       "-p", json.dumps(patch), "--field-manager=hand-edit", "-o", "json").stdout)
        assert (edited["spec"]["ports"], edited["spec"]["selector"]) != (original["ports"], original["selector"])
        wait_for(f"the Service restored after {what}", restored)
    ports = get(cp, namespace, "service", "sturdy")["spec"]["ports"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in ports] == [("http", 8080, "http"), ("grpc", 9000, "grpc")]
    wait_ready(cp, namespace, "sturdy")
