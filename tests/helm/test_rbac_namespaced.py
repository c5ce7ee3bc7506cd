"""Least privilege, proven in namespaced mode (operator.watchNamespaces): Roles in the watched namespaces only;
the operator works there, leaves other namespaces alone and is refused (403) everything there and cluster-wide."""

from __future__ import annotations

import pytest

from tests.helm.rbac import (
    assert_compression_job_runs, assert_forbidden, assert_model_service_ready, can_i, compression_job, model_service, release_fixture,
)
from tests.cluster.helpers import SOLO_NAMESPACE_PREFIX, apply, exists, get

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def watched(control_plane):
    names = [control_plane.create_namespace(SOLO_NAMESPACE_PREFIX + prefix) for prefix in ("watched-a", "watched-b", "unwatched")]
    yield names
    for name in names:
        control_plane.delete_namespace(name)


@pytest.fixture(scope="module")
def namespaced_mode(control_plane, chart_crds, tmp_path_factory, watched):
    yield from release_fixture(control_plane, tmp_path_factory.mktemp("rbac-namespaced"), "rbac-ns",
                               {"operator": {"watchNamespaces": watched[:2]}})


def test_namespaced_operator_works_in_its_namespaces(control_plane, namespaced_mode, watched):
    team_a, team_b, other = watched
    apply(control_plane, other, compression_job("ignored"))
    apply(control_plane, team_a, compression_job("digits-slim"))
    apply(control_plane, team_b, model_service("digits"))
    # What was made after "ignored" in the watched namespaces is served; "ignored", made first, is not.
    assert_compression_job_runs(control_plane, namespaced_mode, team_a, "digits-slim")
    assert_model_service_ready(control_plane, namespaced_mode, team_b, "digits")
    assert not exists(control_plane, other, "job", "ignored-g1")
    assert "status" not in get(control_plane, other, "compressionjob", "ignored")
    # Only Kopf's cluster-scoped observation is refused (it falls back to what it was told): no namespaced call.
    assert namespaced_mode.unexpected_refusals() == []


def test_namespaced_operator_is_refused_elsewhere(control_plane, namespaced_mode, watched):
    team_a, _, other = watched
    kubeconfig = namespaced_mode.kubeconfig
    assert can_i(control_plane, kubeconfig, "create", "jobs.batch", "-n", team_a)
    for request in (("create", "jobs.batch", "-n", other), ("list", "compressionjobs.slimserve.io", "-n", other),
                    ("list", "customresourcedefinitions.apiextensions.k8s.io"), ("list", "namespaces"),
                    ("list", "secrets", "-n", team_a), ("get", "secrets", "-n", other),
                    ("patch", "clusterkopfpeerings.kopf.dev")):
        assert not can_i(control_plane, kubeconfig, *request), request
    assert_forbidden(control_plane, kubeconfig, "get", "jobs", "-n", other)
    assert_forbidden(control_plane, kubeconfig, "get", "compressionjobs", "-n", other)
    assert_forbidden(control_plane, kubeconfig, "get", "crd")
