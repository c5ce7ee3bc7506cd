"""The BatchInference fixtures are what the operator writes: the operator runs on the real control plane, the
test plays the shards' pods (as tests/operator/test_batch_inference_cluster.py does), and each live object must
have its fixture's phase and conditions and get the same Argo CD health and kstatus status.

The operator is the chart's, in namespaced mode over this module's namespace (tests/helm/rbac.py): its calls for
a BatchInference must all be within the chart's Role."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.helpers import SOLO_NAMESPACE_PREFIX, apply, condition, get
from tests.gitops import kstatus
from tests.gitops.argocd import SCRIPTS, run_health_check
from tests.gitops.status_fixtures import batch_inference_fixtures
from tests.helm.conftest import chart_crds  # noqa: F401 (the chart's CRDs, Kopf's peering ones among them)
from tests.helm.rbac import compression_job, release_fixture
from tests.operator.test_batch_inference_cluster import (
    batch_inference, end_pod, pods_by_index, shard_reporter, wait_status,
)

pytestmark = pytest.mark.cluster

SCRIPT = SCRIPTS["resource.customizations.health.slimserve.io_BatchInference"].read_text()
FIXTURES = {fixture.name: fixture for fixture in batch_inference_fixtures()}


@pytest.fixture(scope="module")
def watched(control_plane):
    """A solo namespace (the session's admin operator leaves it alone)."""
    name = control_plane.create_namespace(f"{SOLO_NAMESPACE_PREFIX}gitops-batch")
    yield name
    control_plane.delete_namespace(name)


@pytest.fixture(scope="module")
def release(control_plane, chart_crds, tmp_path_factory, watched):  # noqa: F811
    yield from release_fixture(control_plane, tmp_path_factory.mktemp("gitops-batch"), "gitops",
                               {"operator": {"watchNamespaces": [watched]}})


@pytest.fixture
def namespace(release, watched):
    yield watched
    assert release.unexpected_refusals() == []  # the chart's Role covers every call made for the BatchInference


def shape(status: dict[str, Any]) -> tuple:
    """What the health checks read: the phase and each condition's status and reason."""
    return status.get("phase"), sorted((c["type"], c["status"], c["reason"]) for c in status.get("conditions") or [])


def assert_reads_as(live: dict[str, Any], fixture_name: str) -> None:
    fixture = FIXTURES[fixture_name]
    assert shape(live["status"]) == shape(fixture.obj["status"])
    assert run_health_check(SCRIPT, live)["status"] == fixture.argocd
    if kstatus.go_available():
        assert kstatus.compute([live])[0]["status"] == fixture.kstatus


def live(cp, namespace: str, name: str) -> dict[str, Any]:
    return get(cp, namespace, "batchinference", name)


def test_running_then_succeeded(control_plane, namespace):
    cp = control_plane
    apply(cp, namespace, batch_inference("embed", shards=3, parallelism=3))
    pods = pods_by_index(cp, namespace, "embed-batch-g1", 3)
    report, _ = shard_reporter(cp, namespace, "embed")
    for index in range(3):
        report(index, state="Running", recordsDone=10 * index, recordsTotal=100)
    wait_status(cp, namespace, "embed", "30 records counted", lambda s: s.get("recordsDone") == 30)
    assert_reads_as(live(cp, namespace, "embed"), "running")

    manifest = {"uri": "s3://results/embed/_manifest.json", "digest": "sha256:" + "ab" * 32}
    for index in range(3):
        report(index, state="Succeeded", recordsDone=100, **({"manifest": manifest} if index == 2 else {}))
        end_pod(cp, namespace, pods[index], "succeed")
    wait_status(cp, namespace, "embed", "Succeeded", lambda s: s.get("phase") == "Succeeded")
    assert_reads_as(live(cp, namespace, "embed"), "succeeded")


def test_a_failed_index_over_max_failed_shards(control_plane, namespace):
    cp = control_plane
    apply(cp, namespace, batch_inference("over", shards=2, parallelism=2, backoffLimitPerIndex=0, maxFailedShards=0))
    pods = pods_by_index(cp, namespace, "over-batch-g1", 2)
    end_pod(cp, namespace, pods[1], "fail")  # a crash: the pod reports nothing itself
    wait_status(cp, namespace, "over", "Failed", lambda s: s.get("phase") == "Failed", timeout=90)
    failed = live(cp, namespace, "over")
    assert_reads_as(failed, "shards-failed")
    assert "shard 1: pod over-batch-g1-1-" in run_health_check(SCRIPT, failed)["message"]


def test_waiting_for_a_compression_job(control_plane, namespace):
    cp = control_plane
    apply(cp, namespace, batch_inference("chained", model={"compressionJobRef": {"name": "minilm-slim"}}))
    wait_status(cp, namespace, "chained", "CompressionJobNotFound",
                lambda s: condition(s, "Succeeded").get("reason") == "CompressionJobNotFound")
    assert_reads_as(live(cp, namespace, "chained"), "compression-job-missing")

    apply(cp, namespace, compression_job("minilm-slim"))  # its pod keeps running: it never succeeds here
    wait_status(cp, namespace, "chained", "WaitingForCompression",
                lambda s: condition(s, "Succeeded").get("reason") == "WaitingForCompression", timeout=90)
    assert_reads_as(live(cp, namespace, "chained"), "waiting-for-compression")
