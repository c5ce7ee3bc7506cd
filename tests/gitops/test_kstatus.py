"""Flux (and kpt) read our resources through kstatus: it must say InProgress while work is under way, Current
when done and Failed when it will not get there, for the statuses the operator really writes."""

from __future__ import annotations

import pytest

from tests.gitops import kstatus
from tests.gitops.status_fixtures import batch_inference_fixtures, compression_job_fixtures, model_service_fixtures

pytestmark = pytest.mark.skipif(not kstatus.go_available(), reason="needs Go to build the kstatus command")

FIXTURES = [f for kind in (compression_job_fixtures, model_service_fixtures, batch_inference_fixtures)
            for f in kind() if f.kstatus is not None]

# kstatus knows a custom resource is under way only from a `Reconciling` (or `Ready`=False) condition, and
# that it failed only from `Stalled`=True: every kind writes them. A gap listed here is a strict expected
# failure, so it fails the moment the operator covers it and the entry must go.
KNOWN_GAPS: dict[str, str] = {}


def _key(fixture) -> str:
    return f"{fixture.obj['kind']}/{fixture.name}"


def _params():
    for fixture in FIXTURES:
        gap = KNOWN_GAPS.get(_key(fixture))
        marks = [pytest.mark.xfail(strict=True, reason=gap)] if gap else []
        yield pytest.param(fixture, id=_key(fixture), marks=marks)


@pytest.fixture(scope="module")
def computed() -> dict[str, dict[str, str]]:
    results = kstatus.compute([f.obj for f in FIXTURES])
    return {_key(f): result for f, result in zip(FIXTURES, results, strict=True)}


@pytest.mark.parametrize("fixture", list(_params()))
def test_kstatus_reads_the_status(fixture, computed):
    result = computed[_key(fixture)]
    assert result["name"] == fixture.obj["metadata"]["name"]
    assert result["status"] == fixture.kstatus, result


def test_the_command_reads_kubernetes_lists():
    """`kubectl get -o json` prints a List: the command must read one (the live-object checks feed it so)."""
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "generation": 3},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 2},
    }
    results = kstatus.compute({"apiVersion": "v1", "kind": "List", "items": [deployment]})
    assert results == [{"name": "web", "status": "InProgress",
                        "message": "Deployment generation is 3, but latest observed generation is 2"}]
