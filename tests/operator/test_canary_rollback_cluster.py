"""The canary's automatic rollback with real components: the operator as a process on the real control plane (kwok
nodes), the real Prometheus scraping real `slimserve serve` processes on loopback, labelled as the pods of two
ModelServices' canaries would be.

Both canaries serve the same decoder under the same load: a client that keeps one long generation running and
clients asking for short ones. The broken canary has one sequence slot and waits at most a second for it, so the
short requests behind the long one are refused with 503 (the server's own back-pressure); the healthy one has
slots for all. The operator rolls the broken canary's traffic back (status, Event, its Deployment at 0 replicas,
the spec untouched) and leaves the healthy one alone, seen in a status write of an evaluation that judged it.
Then the spec is edited to resume, and Prometheus goes away: the condition and an Event say so, nothing moves.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
from pathlib import Path

import pytest
import yaml

from tests.cluster.helpers import SOLO_NAMESPACE_PREFIX, apply, condition, get, wait_for, wait_for_event
from tests.operator.conftest import TEST_OPERATOR_CONFIG
from tests.operator.test_model_service_cluster import model_service, status_of
from tests.prometheus.conftest import prometheus_binary, start_prometheus  # noqa: F401 - fixtures
from tests.serving.serving_helpers import ServerProcess, post_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "decoder"))
from serving_fixtures import CONTEXT, save_random_llama  # noqa: E402

pytestmark = pytest.mark.cluster

MODEL = "tiny-llama"
STABLE_URI, CANDIDATE_URI = "builtin://digits-mlp", "builtin://digits-cnn"
ROLLBACK = {"maxErrorPercent": 20, "windowSeconds": 10, "minRequests": 5}
LONG = CONTEXT - 16  # tokens that keep a sequence in its slot for seconds
SHORT_CLIENTS = 3


def pod(deployment: str, suffix: str) -> str:
    """A pod name as a Deployment's ReplicaSet makes it: the Deployment's name, a hash and a suffix."""
    return f"{deployment}-5d4f8b9c7-{suffix}"


class Load:
    """One long generation after another, and short ones from a few clients, on one server until stopped."""

    def __init__(self, address: str):
        self.address = address
        self.stopping = threading.Event()
        self.answers: list[int] = []
        self.threads = [threading.Thread(target=self._long, daemon=True)]
        self.threads += [threading.Thread(target=self._short, daemon=True) for _ in range(SHORT_CLIENTS)]
        for thread in self.threads:
            thread.start()

    def _long(self) -> None:
        while not self.stopping.is_set():
            host, port = self.address.split(":")
            connection = http.client.HTTPConnection(host, int(port), timeout=120)
            try:
                body = json.dumps({"text_input": "w1", "parameters": {"max_tokens": LONG}})
                connection.request("POST", f"/v2/models/{MODEL}/generate_stream", body,
                                   {"Content-Type": "application/json"})
                response = connection.getresponse()
                while not self.stopping.is_set() and response.read(4096):
                    pass
            except OSError:
                pass
            finally:
                connection.close()

    def _short(self) -> None:
        while not self.stopping.is_set():
            try:
                status, _ = post_json(self.address, f"/v2/models/{MODEL}/generate",
                                      {"text_input": "w2 w3", "parameters": {"max_tokens": 2}}, timeout=60)
                self.answers.append(status)
            except OSError:
                pass
            self.stopping.wait(0.1)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> Path:
    return save_random_llama(tmp_path_factory.mktemp("decoder") / MODEL)


@pytest.fixture
def canary_servers(decoder, tmp_path):
    """(broken, healthy): `slimserve serve` of the decoder as canaries, the broken one with a single slot and a
    one-second wait for it."""
    common = ("--model-version", "canary", "--max-waiting", "64")
    broken = ServerProcess(f"file://{decoder}", tmp_path, *common, "--max-sequences", "1", "--queue-timeout-s", "1")
    healthy = ServerProcess(f"file://{decoder}", tmp_path, *common, "--max-sequences", "8", "--queue-timeout-s", "60")
    started = []
    try:
        for server in (broken, healthy):
            started.append(server.start())
        yield broken, healthy
    finally:
        for server in started:
            server.stop()


def canary_spec(percent: int = 20) -> dict:
    return {"model": {"uri": CANDIDATE_URI}, "trafficPercent": percent, "rollback": ROLLBACK}


def rolled_back(cp, namespace: str, name: str) -> dict | None:
    found = condition(status_of(cp, namespace, name), "CanaryRolledBack")
    return found if found.get("status") == "True" else None


def test_the_operator_rolls_a_failing_canary_back_and_leaves_a_healthy_one(
    control_plane, operator_factory, canary_servers, start_prometheus, tmp_path
):
    cp = control_plane
    broken, healthy = canary_servers
    namespace = cp.create_namespace(f"{SOLO_NAMESPACE_PREFIX}canary-rollback")  # only this operator acts here
    prometheus = start_prometheus([
        (broken.http_url, {"namespace": namespace, "pod": pod("broken-canary", "x2k9p")}),
        (healthy.http_url, {"namespace": namespace, "pod": pod("healthy-canary", "q7w4z")}),
        # The broken server again, as a pod of the healthy service's stable side: not the healthy canary's.
        (broken.http_url, {"namespace": namespace, "pod": pod("healthy", "m3n8v")}),
    ])
    try:
        config = tmp_path / "operator.yaml"
        config.write_text(yaml.safe_dump({**TEST_OPERATOR_CONFIG, "prometheusAddress": f"http://{prometheus.address}"}))
        loads = [Load(broken.http_url), Load(healthy.http_url)]
        try:
            operator = operator_factory(extra_args=("--namespace", namespace, f"--config={config}"))
            apply(cp, namespace, model_service("broken", replicas=5, canary=canary_spec()),
                  model_service("healthy", replicas=5, canary=canary_spec()))

            judged = wait_for("the broken canary rolled back", lambda: rolled_back(cp, namespace, "broken"), timeout=120)
            assert judged["reason"] == "ErrorRateExceeded", judged
            wait_for_event(cp, namespace, "broken", reason="ErrorRateExceeded", message="CanaryRolledBack is true",
                           timeout=120)
            wait_for("the broken canary's Deployment at 0 replicas and the stable at 5", lambda: (
                get(cp, namespace, "deployment", "broken-canary")["spec"]["replicas"],
                get(cp, namespace, "deployment", "broken")["spec"]["replicas"]) == (0, 5), timeout=90)
            status = status_of(cp, namespace, "broken")
            record = status["canary"]["rolledBack"]
            assert (record["modelUri"], record["trafficPercent"], record["windowSeconds"]) == (CANDIDATE_URI, 20, 10)
            assert record["requests"] >= ROLLBACK["minRequests"] and record["errorPercent"] > ROLLBACK["maxErrorPercent"]
            assert get(cp, namespace, "modelservice", "broken")["spec"]["canary"]["trafficPercent"] == 20  # the user's
            wait_for("status.canary at 0%", lambda: status_of(cp, namespace, "broken")["canary"]["trafficPercent"] == 0)
            assert 503 in loads[0].answers  # the server's own refusals are what was measured

            # The healthy canary under the same load: an evaluation that judged its requests, and no rollback.
            def judged_healthy():
                found = condition(status_of(cp, namespace, "healthy"), "CanaryRolledBack")
                return found if found.get("reason") == "WithinThreshold" else None

            verdict = wait_for("an evaluation of the healthy canary within its threshold", judged_healthy, timeout=60)
            assert verdict["status"] == "False" and verdict["message"].startswith("0 of "), verdict
            assert "rolledBack" not in status_of(cp, namespace, "healthy")["canary"]
            assert get(cp, namespace, "deployment", "healthy-canary")["spec"]["replicas"] == 1
            assert set(loads[1].answers) == {200}
            # The scale subresource's selector, an autoscaler's aimed at the ModelService, picks the stable pods only.
            selector = status_of(cp, namespace, "healthy")["selector"]
            selected = get(cp, namespace, "pods", "-l", selector)["items"]
            assert [p["metadata"]["labels"]["slimserve.io/model-version"] for p in selected] == ["stable"] * 4, selector

            # The rollback holds across a restart of the operator and a spec edit that is not the candidate's or its
            # share, seen once the operator's pass for that edit wrote its status.
            operator.restart()
            tighter = {**canary_spec(), "rollback": {**ROLLBACK, "minRequests": 6}}
            cp.kubectl("patch", "-n", namespace, "modelservice", "broken", "--type=merge",
                       "-p", json.dumps({"spec": {"canary": tighter}}))
            generation = get(cp, namespace, "modelservice", "broken")["metadata"]["generation"]
            wait_for("the pass of the edit", lambda: status_of(cp, namespace, "broken")["observedGeneration"] == generation,
                     timeout=120)
            assert status_of(cp, namespace, "broken")["canary"]["rolledBack"] == record
            assert rolled_back(cp, namespace, "broken")
            assert get(cp, namespace, "deployment", "broken-canary")["spec"]["replicas"] == 0

            # A new trafficPercent resumes the canary: the rollback is what the spec asked for then.
            cp.kubectl("patch", "-n", namespace, "modelservice", "broken", "--type=merge",
                       "-p", json.dumps({"spec": {"canary": canary_spec(40)}}))
            wait_for_event(cp, namespace, "broken", reason="Resumed", message="was rolled back at 20%", timeout=120)
        finally:
            for load in loads:
                load.stop()

        # Prometheus gone: the healthy canary's rate is unknown, said so, and nothing is rolled back.
        prometheus.stop()
        wait_for_event(cp, namespace, "healthy", reason="MetricsUnavailable", message="CanaryRolledBack is unknown",
                       timeout=120)
        unknown = condition(status_of(cp, namespace, "healthy"), "CanaryRolledBack")
        assert (unknown["status"], unknown["reason"]) == ("Unknown", "MetricsUnavailable"), unknown
        assert "nothing rolled back" in unknown["message"]
        assert get(cp, namespace, "deployment", "healthy-canary")["spec"]["replicas"] == 1
        assert "rolledBack" not in status_of(cp, namespace, "healthy")["canary"]
    finally:
        # Deleted while the operator runs: Kopf stops the rollback loops and removes their finalizer.
        cp.kubectl("delete", "-n", namespace, "modelservices", "--all", "--wait=true", "--timeout=120s", timeout=150)
        cp.delete_namespace(namespace)


def test_bad_rollback_settings_are_refused_at_admission(control_plane, crds, namespace):
    for settings, field in (({"maxErrorPercent": 100}, "maxErrorPercent"), ({"maxErrorPercent": -1}, "maxErrorPercent"),
                            ({"maxErrorPercent": 5, "windowSeconds": 5}, "windowSeconds"),
                            ({"maxErrorPercent": 5, "minRequests": 0}, "minRequests"),
                            ({"windowSeconds": 60}, "maxErrorPercent")):
        manifest = model_service("refused", replicas=5, canary={"model": {"uri": CANDIDATE_URI}, "trafficPercent": 20,
                                                                "rollback": settings})
        answer = control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest), check=False)
        assert answer.returncode != 0 and f"spec.canary.rollback.{field}" in answer.stderr, (settings, answer.stderr)

