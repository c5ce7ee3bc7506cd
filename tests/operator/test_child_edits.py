"""Telling a hand edit of a ModelService's child from the work of others the operator leaves it to (an
autoscaler's replicas, the API server's defaults) and from the operator's own pass, without a cluster."""

from __future__ import annotations

import logging
import threading

from slimserve.controller.model_service import observe_child
from slimserve.controller.model_service_state import Runtime

KEY = ("team-a", "digits")
OWNER_REF = {"apiVersion": "slimserve.io/v1alpha1", "kind": "ModelService", "name": "digits", "uid": "uid-1",
             "controller": True}
DEPLOYMENT = ("apps/v1", "Deployment", "digits")


def deployment(replicas: int | None = None, image: str = "server:1", **defaults) -> dict:
    """A Deployment as the operator's manifest has it (no `replicas`: an autoscaler's) or as it lives."""
    spec = {"selector": {"matchLabels": {"app": "digits"}},
            "template": {"spec": {"containers": [{"name": "server", "image": image}]}}, **defaults}
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "digits", "namespace": "team-a", "labels": {"app": "digits"},
                         "ownerReferences": [OWNER_REF]},
            "spec": spec}


class RecordingQueue:
    def __init__(self):
        self.added: list[tuple] = []

    def add(self, key, delay: float = 0.0) -> None:
        self.added.append(key)


def runtime_with(manifest: dict, live: dict) -> Runtime:
    runtime = Runtime()
    runtime.queue = RecordingQueue()
    runtime.remember_child(KEY, DEPLOYMENT, live, manifest)
    return runtime


def test_an_autoscalers_replicas_and_the_api_servers_defaults_are_not_a_hand_edit():
    manifest = deployment()  # autoscaled: the operator states no replicas
    runtime = runtime_with(manifest, deployment(1, revisionHistoryLimit=10))
    assert not runtime.changed_since_applied(KEY, DEPLOYMENT, deployment(4, revisionHistoryLimit=10))
    assert runtime.changed_since_applied(KEY, DEPLOYMENT, deployment(4, image="evil:1", revisionHistoryLimit=10))
    labelled = deployment(1, revisionHistoryLimit=10)
    labelled["metadata"]["labels"]["app"] = "other"
    assert runtime.changed_since_applied(KEY, DEPLOYMENT, labelled)


def test_replicas_the_operator_states_are_its_own():
    runtime = runtime_with(deployment(2), deployment(2))
    assert not runtime.changed_since_applied(KEY, DEPLOYMENT, deployment(2))
    assert runtime.changed_since_applied(KEY, DEPLOYMENT, deployment(5))  # kubectl scale: restored
    assert not Runtime().changed_since_applied(KEY, DEPLOYMENT, deployment(5))  # never applied: nothing to tell


def test_a_hand_edit_is_restored_and_said(caplog):
    runtime = runtime_with(deployment(2), deployment(2))
    with caplog.at_level(logging.INFO, logger="slimserve.controller.model_service"):
        observe_child(runtime, "apps/v1", "Deployment", "MODIFIED", deployment(5))
    assert runtime.queue.added == [KEY] and KEY in runtime.full_pass_wanted
    assert "was changed by someone else; restoring it" in caplog.text


def test_a_change_seen_during_the_services_pass_is_checked_again_not_blamed_on_someone_else(caplog):
    # The pass applied replicas 3 and has not yet remembered it when the watch delivers the change.
    runtime = runtime_with(deployment(2), deployment(2))
    holding, done = threading.Event(), threading.Event()

    def a_pass() -> None:
        with runtime.lock(KEY):
            holding.set()
            done.wait(10)

    worker = threading.Thread(target=a_pass)
    worker.start()
    holding.wait(10)
    try:
        assert runtime.pass_under_way(KEY)
        with caplog.at_level(logging.DEBUG, logger="slimserve.controller.model_service"):
            observe_child(runtime, "apps/v1", "Deployment", "MODIFIED", deployment(3))
    finally:
        done.set()
        worker.join(10)
    assert runtime.queue.added == [KEY] and KEY in runtime.full_pass_wanted  # checked again by a full pass
    assert "someone else" not in caplog.text and "changed during a pass" in caplog.text
    assert not runtime.pass_under_way(KEY)
