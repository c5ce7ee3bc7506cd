"""The ModelService controller's runtime: on the operator's memo, started and stopped with Kopf's lifecycle;
its loops back off on failure; children owned and statuses written through the helpers both resources share."""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time

import kopf
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slimserve.api import API_VERSION
from slimserve.controller import kube, model_service_runtime
from slimserve.kube import status as status_update
from slimserve.controller.app import OperatorMemo
from slimserve.controller.builders.model_service import Owner
from slimserve.controller.config import OperatorConfig
from slimserve.controller.model_service_events import Transition
from slimserve.controller.model_service_keda import follow_keda, next_round_in
from slimserve.controller.model_service_reconcile import write_status
from slimserve.controller.model_service_state import Runtime, Snapshot
from slimserve.controller.model_service_status import autoscaling_verdict, inputs_for, resolve_model_uri
from tests.cluster.helpers import SOLO_NAMESPACE_PREFIX, wait_for

OWNER = Owner("digits", "ns", "uid-1")


def snapshot(owner: Owner, *, keda: bool) -> Snapshot:
    verdict = autoscaling_verdict("concurrency", keda_installed=keda)
    return Snapshot(owner, inputs_for(owner, 1, resolve_model_uri("file:///m"), verdict, "cluster.local"), {}, {})


def unreachable_api() -> client.ApiClient:
    """An API client whose server refuses every connection (nothing listens on port 1)."""
    configuration = client.Configuration()
    configuration.host = "http://127.0.0.1:1"
    configuration.retries = 0
    return client.ApiClient(configuration)


def model_service_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("model-services-")]


# ---- the memo ----------------------------------------------------------------------------------------


def test_every_copy_of_the_memo_shares_one_model_service_runtime():
    memo = OperatorMemo(config=OperatorConfig(), api=client.ApiClient())
    per_object = copy.copy(memo)  # what Kopf hands each object's handlers
    assert isinstance(memo.model_services, Runtime)
    assert per_object.model_services is memo.model_services
    assert memo.model_services.config is memo.config and memo.model_services.api is memo.api
    assert OperatorMemo(config=OperatorConfig(), api=memo.api).model_services is not memo.model_services


def test_passes_cannot_be_queued_before_the_runtime_starts():
    with pytest.raises(RuntimeError, match="not been started"):
        model_service_runtime.queue_full_pass(Runtime(), ("ns", "digits"))


# ---- lifecycle ---------------------------------------------------------------------------------------


@pytest.mark.cluster
def test_runtime_runs_between_start_and_stop(control_plane, crds):
    """Started: the queue's workers run passes (a full pass of a ModelService that does not exist forgets it),
    and the KEDA loop is a task of the loop. Stopped: the workers are joined and the task is done."""
    api = control_plane.api_client()
    runtime = Runtime(config=OperatorConfig(), api=api)
    key = (f"{SOLO_NAMESPACE_PREFIX}nowhere", "gone")

    async def scenario() -> tuple[list[asyncio.Task], list[str]]:
        await model_service_runtime.start(runtime, {}, keda_interval=0.05)
        tasks = list(runtime.background)
        assert [t.get_name() for t in tasks] == ["model-services-keda"] and not tasks[0].done()
        assert len(model_service_threads()) == model_service_runtime.QUEUE_WORKERS
        runtime.snapshots[key] = snapshot(OWNER, keda=False)
        model_service_runtime.queue_full_pass(runtime, key)
        await asyncio.to_thread(wait_for, "the pass to forget the missing service", lambda: key not in runtime.snapshots, 10)
        await model_service_runtime.stop(runtime)
        await model_service_runtime.stop(runtime)  # a second stop (Kopf's cleanup after a failed start) is harmless
        return tasks, model_service_threads()

    try:
        tasks, threads_after = asyncio.run(scenario())
    finally:
        api.close()
    assert all(task.done() for task in tasks) and runtime.background == []
    assert threads_after == []
    assert len(runtime.queue) == 0


# ---- Events ------------------------------------------------------------------------------------------


@pytest.mark.cluster
def test_events_posted_from_any_thread_go_out_until_the_recorder_stops(control_plane, namespace, caplog):
    """Only between start and stop; one Event that cannot be made (a reference without uid) is logged and the
    next one still goes out."""
    api = control_plane.api_client()
    core = client.CoreV1Api(api)
    target = core.create_namespaced_config_map(namespace, {"metadata": {"name": "target"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "target", "namespace": namespace, "uid": target.metadata.uid}}
    runtime = Runtime(config=OperatorConfig(), api=api)
    caplog.set_level(logging.INFO, logger="slimserve.controller.model_service_events")

    async def scenario() -> None:
        runtime.events.post(api, ref, Transition("Normal", "TooEarly", "before start"))
        runtime.events.start()
        broken = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "target", "namespace": namespace}}
        runtime.events.post(api, broken, Transition("Warning", "NoUid", "an involvedObject without uid"))
        poster = threading.Thread(target=runtime.events.post, args=(api, ref, Transition("Warning", "FromAThread", "x")))
        poster.start()
        poster.join()
        await runtime.events.stop()  # posts what is queued first
        runtime.events.post(api, ref, Transition("Normal", "TooLate", "after stop"))

    try:
        asyncio.run(scenario())
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=target").items
    finally:
        api.close()
    assert [(e.type, e.reason, e.involved_object.uid) for e in events] == [("Warning", "FromAThread", target.metadata.uid)]
    dropped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("not posting Event")]
    assert dropped == ["not posting Event TooEarly for target: not started",
                       "not posting Event TooLate for target: not started"]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == ["could not post Event NoUid"]


# ---- the KEDA loop -----------------------------------------------------------------------------------


def test_failed_keda_rounds_back_off_doubling_up_to_the_cap():
    assert [next_round_in(10, failures) for failures in range(6)] == [10, 10, 20, 40, 60, 60]
    assert next_round_in(90, 3) == 90  # an interval above the cap is never shortened


@pytest.mark.cluster
def test_keda_loop_backs_off_while_the_api_server_is_away_and_requeues_once_it_answers(control_plane, caplog):
    """Against a server that refuses connections the rounds fail, further apart each time; with the real API
    server the next round runs and queues the service whose last pass assumed KEDA was installed."""
    runtime = Runtime(config=OperatorConfig(), api=unreachable_api())
    runtime.snapshots[("ns", "digits")] = snapshot(OWNER, keda=True)  # the test cluster has no KEDA
    caplog.set_level(logging.INFO, logger="slimserve.controller.model_service_keda")
    requeued: list[tuple[str, str]] = []
    api = control_plane.api_client()

    def failures() -> list[float]:
        return [r.created for r in caplog.records if "checking KEDA's ScaledObjects failed" in r.getMessage()]

    async def scenario() -> None:
        loop = asyncio.create_task(follow_keda(runtime, requeued.append, 0.1))
        await asyncio.to_thread(wait_for, "four failed rounds", lambda: len(failures()) >= 4, 20, 0.02)
        runtime.api = api
        await asyncio.to_thread(wait_for, "the service to be queued", lambda: requeued, 20, 0.02)
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop

    try:
        asyncio.run(scenario())
    finally:
        api.close()
    times = failures()[:4]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    # 0.1 s before the second failure, 0.2 s before the third, 0.4 s before the fourth (plus each round's own time).
    assert gaps[1] >= 0.19 and gaps[2] >= 0.39 and gaps[2] > gaps[0]
    assert set(requeued) == {("ns", "digits")}


# ---- children and status, through the helpers both resources share --------------------------------------


def test_children_carry_the_owner_reference_kopf_adopt_makes():
    body = kopf.Body({"apiVersion": API_VERSION, "kind": "ModelService", "metadata": {"name": "digits", "uid": "uid-1"}})
    adopted: dict = {"metadata": {}}
    kopf.append_owner_reference(adopted, owner=body)  # what kopf.adopt does for the owner reference
    assert adopted["metadata"]["ownerReferences"] == [OWNER.reference()]
    assert kube.controller_uid({"metadata": {"ownerReferences": [OWNER.reference()]}}) == "uid-1"


def model_service_object(name: str) -> dict:
    return {"apiVersion": API_VERSION, "kind": "ModelService", "metadata": {"name": name},
            "spec": {"model": {"uri": "builtin://digits-mlp"}}}


@pytest.mark.cluster
def test_model_service_status_is_written_by_the_shared_writer_without_a_precondition(control_plane, crds):
    """The ModelService's only writer patches with no resourceVersion: a write after any other change of the
    object lands; the CompressionJob's kind of write, with a stale resourceVersion, is refused (409)."""
    namespace = control_plane.create_namespace(f"{SOLO_NAMESPACE_PREFIX}status")  # no operator watches it
    api = control_plane.api_client()
    objects = client.CustomObjectsApi(api)
    try:
        created = objects.create_namespaced_custom_object("slimserve.io", "v1alpha1", namespace, "modelservices",
                                                          model_service_object("digits"))
        stale = created["metadata"]["resourceVersion"]
        objects.patch_namespaced_custom_object("slimserve.io", "v1alpha1", namespace, "modelservices", "digits",
                                               {"metadata": {"annotations": {"touched": "yes"}}})
        owner = Owner("digits", namespace, created["metadata"]["uid"])
        assert write_status(api, owner, {"observedGeneration": 1, "url": "http://one"})
        with pytest.raises(ApiException) as refused:
            status_update.patch_status(api, "modelservices", namespace, "digits", {"url": "http://two"},
                                       resource_version=stale)
        assert refused.value.status == 409
        status = objects.get_namespaced_custom_object("slimserve.io", "v1alpha1", namespace, "modelservices", "digits")
        assert status["status"]["url"] == "http://one" and status["status"]["observedGeneration"] == 1
        assert not write_status(api, Owner("absent", namespace, "uid-0"), {"observedGeneration": 1})
    finally:
        api.close()
        control_plane.delete_namespace(namespace)


@pytest.mark.cluster
def test_operator_stops_its_model_service_runtime_on_shutdown(operator_factory, control_plane):
    """SIGTERM: Kopf runs the cleanup handler, which stops the queue and loops, and the process exits."""
    namespace = control_plane.create_namespace(f"{SOLO_NAMESPACE_PREFIX}shutdown")
    proc = operator_factory(extra_args=("--namespace", namespace))
    try:
        client.CustomObjectsApi(control_plane.api_client()).create_namespaced_custom_object(
            "slimserve.io", "v1alpha1", namespace, "modelservices", model_service_object("digits"))
        wait_for("the ModelService's Deployment", lambda: "deployment.apps/" in control_plane.kubectl(
            "get", "deployments", "-n", namespace, "-o", "name").stdout, 60)
        started = time.monotonic()
        proc.process.terminate()
        returncode = proc.process.wait(timeout=20)
        stopped_in = time.monotonic() - started
    finally:
        control_plane.delete_namespace(namespace)
    assert returncode == 0, proc.logs()[-3000:]
    assert stopped_in < 10
    assert "Activity 'stop_model_service_controller' succeeded" in proc.logs(), proc.logs()[-3000:]
