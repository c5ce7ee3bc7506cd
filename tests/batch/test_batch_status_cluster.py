"""Shards' pods report into their BatchInference's status on the real API server, as the pods' own
ServiceAccount (the access the operator builds): each its own entry of status.shardProgress, a malformed
record's place in its shard's entry and termination message; a pod of an older generation writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slimserve.api.batch_inference import BatchInferenceSpec
from slimserve.api.workload import BatchEnv
from slimserve.controller.builders.batch_inference import build_access, service_account_name
from tests.batch.conftest import DIGITS, pod_container, start_pod, write_jsonl
from tests.cluster.helpers import SOLO_NAMESPACE_PREFIX, apply, get
from tests.operator.conftest import crds  # noqa: F401  (the CRDs on the control plane)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NAME = "scores"
TERMINATION_LOG = BatchEnv.variable("termination_log")  # the one-line failure's file


@pytest.fixture
def namespace(control_plane):
    """A solo namespace: the pods this test plays must be the BatchInference's only writers, and a session operator
    (started by this worker's operator tests) would reconcile it in any other."""
    name = control_plane.create_namespace(f"{SOLO_NAMESPACE_PREFIX}batch-status")
    yield name
    control_plane.delete_namespace(name, wait=False)


def start_pods(cp, namespace: str, spec: dict, root, indexes, generation: int = 1):
    """The pods of these shards, with the pods' ServiceAccount; a failure's one line goes to root/termination-log."""
    kubeconfig = cp.service_account_kubeconfig(namespace, service_account_name(NAME))
    container = pod_container(BatchInferenceSpec.model_validate(spec), name=NAME, namespace=namespace, generation=generation)
    env = {"KUBECONFIG": str(kubeconfig), TERMINATION_LOG.name: str(root / "termination-log")}
    return [start_pod(container, index, root, with_status=True, extra_env=env) for index in indexes]


def test_each_pod_reports_its_shard_and_an_older_generation_writes_nothing(control_plane, crds, namespace, tmp_path, digits):
    cp = control_plane
    data = tmp_path / "mnt" / "pvc" / "data"
    data.mkdir(parents=True)
    np.save(data / "a.npy", digits)
    rows = [{"input": row.tolist()} for row in digits[:5]]
    write_jsonl(data / "b.jsonl", [*rows[:3], {"input": "n/a"}, *rows[3:]])
    spec = {"model": {"uri": "builtin://digits-cnn"}, "input": {"uri": "pvc://data/"},
            "output": {"uri": f"pvc://results/{NAME}/"}, "shards": 2, "parallelism": 2, "batchSize": 2}
    apply(cp, namespace, {"apiVersion": "slimserve.io/v1alpha1", "kind": "BatchInference", "metadata": {"name": NAME},
                          "spec": spec}, *build_access(name=NAME, namespace=namespace))

    pods = start_pods(cp, namespace, spec, tmp_path, [0, 1])
    assert [pod.process.wait(timeout=180) for pod in pods] == [0, 1], pods[0].stderr.read_text()[-2000:]
    found = get(cp, namespace, "batchinference", NAME)
    done, failed = found["status"]["shardProgress"]["0"], found["status"]["shardProgress"]["1"]
    assert (done["state"], done["generation"], done["recordsDone"], done["recordsTotal"]) == ("Succeeded", 1, DIGITS, DIGITS)
    assert done["part"] == {"uri": f"pvc://results/{NAME}/part-00000.jsonl", "records": DIGITS,
                            "digest": done["part"]["digest"]} and done["part"]["digest"].startswith("sha256:")
    assert (failed["state"], failed["recordsDone"], failed["recordsTotal"]) == ("Failed", 2, 6)
    assert failed["message"].startswith("MalformedRecord: b.jsonl line 4: column 'input'")
    assert (tmp_path / "termination-log").read_text().startswith("MalformedRecord: b.jsonl line 4: column 'input'")
    results = tmp_path / "mnt" / "pvc" / "results" / NAME
    assert sorted(path.name for path in results.iterdir()) == ["part-00000.json", "part-00000.jsonl"]
    run_id = json.loads((results / "part-00000.json").read_text())["runId"]
    assert run_id == f"{namespace}/{NAME}/{found['metadata']['uid']}/1"  # this object's uid and generation

    cp.kubectl("patch", "-n", namespace, f"batchinference/{NAME}", "--type=merge", "-p", '{"spec": {"batchSize": 8}}')
    before = get(cp, namespace, "batchinference", NAME)["metadata"]["resourceVersion"]
    (stale,) = start_pods(cp, namespace, spec, tmp_path, [0], generation=1)  # generation 1's pod, run again
    assert stale.process.wait(timeout=180) != 0 and "StaleGeneration" in stale.stderr.read_text()
    assert get(cp, namespace, "batchinference", NAME)["metadata"]["resourceVersion"] == before
