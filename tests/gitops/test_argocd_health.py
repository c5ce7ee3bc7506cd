"""Argo CD health checks of every kind, run as Argo CD runs them (Lua 5.1), on the statuses the operator writes."""

from __future__ import annotations

import pytest
import yaml

from tests.gitops.argocd import ARGOCD_CM, HEALTH_STATUSES, SCRIPTS, argocd_cm, render_argocd_cm, run_health_check
from tests.gitops.status_fixtures import batch_inference_fixtures, compression_job_fixtures, model_service_fixtures

CJ_SCRIPT = SCRIPTS["resource.customizations.health.slimserve.io_CompressionJob"].read_text()
MS_SCRIPT = SCRIPTS["resource.customizations.health.slimserve.io_ModelService"].read_text()
BI_SCRIPT = SCRIPTS["resource.customizations.health.slimserve.io_BatchInference"].read_text()


@pytest.mark.parametrize("fixture", compression_job_fixtures(), ids=lambda f: f.name)
def test_compression_job_health(fixture):
    health = run_health_check(CJ_SCRIPT, fixture.obj)
    assert health["status"] == fixture.argocd, health
    assert fixture.message in health["message"], health


@pytest.mark.parametrize("fixture", model_service_fixtures(), ids=lambda f: f.name)
def test_model_service_health(fixture):
    health = run_health_check(MS_SCRIPT, fixture.obj)
    assert health["status"] == fixture.argocd, health
    assert fixture.message in health["message"], health


@pytest.mark.parametrize("fixture", batch_inference_fixtures(), ids=lambda f: f.name)
def test_batch_inference_health(fixture):
    health = run_health_check(BI_SCRIPT, fixture.obj)
    assert health["status"] == fixture.argocd, health
    assert fixture.message in health["message"], health


@pytest.mark.parametrize("script", [CJ_SCRIPT, MS_SCRIPT, BI_SCRIPT],
                         ids=["CompressionJob", "ModelService", "BatchInference"])
@pytest.mark.parametrize(
    "status",
    [
        {},  # written by something else than the operator
        {"observedGeneration": 1, "conditions": []},
        {"observedGeneration": 1, "conditions": [{"type": "Ready"}, {"type": "Succeeded"}]},  # fields missing
    ],
    ids=["empty", "no-conditions", "bare-conditions"],
)
def test_partial_status_is_progressing_not_an_error(script, status):
    obj = {"apiVersion": "slimserve.io/v1alpha1", "kind": "X", "metadata": {"name": "x", "generation": 1}, "status": status}
    health = run_health_check(script, obj)
    assert health["status"] == "Progressing"
    assert health["message"]


@pytest.mark.parametrize("fixtures", [compression_job_fixtures, model_service_fixtures, batch_inference_fixtures])
def test_every_fixture_state_is_a_valid_argocd_health(fixtures):
    states = {f.argocd for f in fixtures()}
    assert states <= HEALTH_STATUSES
    assert states == {"Healthy", "Progressing", "Degraded"}  # each outcome of each kind is exercised


def test_argocd_cm_snippet_matches_the_scripts():
    """The shipped argocd-cm snippet embeds exactly the .lua files (regenerate: python -m tests.gitops.argocd)."""
    shipped = ARGOCD_CM.read_text()
    assert shipped == render_argocd_cm()
    assert yaml.safe_load(shipped)["data"] == argocd_cm()["data"]
