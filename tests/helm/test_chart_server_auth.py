"""The chart's one cluster-scoped grant for ModelServices in auth mode kubernetes: TokenReviews for the
server pods of the ModelServices a cluster admin lists, and nothing when none is listed."""

from __future__ import annotations

from tests.helm.chart import find, render, template


def test_no_token_review_grant_unless_listed():
    objects = render()
    bindings = find(objects, "ClusterRoleBinding")
    assert not any("token-review" in b["metadata"]["name"] for b in bindings)
    assert not any("token-review" in r["metadata"]["name"] for r in find(objects, "ClusterRole"))


def test_listed_model_services_get_token_reviews_and_nothing_more():
    objects = render({"serverAuth": {"tokenReviewers": [{"namespace": "team-a", "name": "digits"},
                                                       {"namespace": "team-b", "name": "minilm"}]}})
    (role,) = [r for r in find(objects, "ClusterRole") if r["metadata"]["name"].endswith("-server-token-review")]
    assert role["rules"] == [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]
    bindings = [b for b in find(objects, "ClusterRoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]]
    assert sorted((b["subjects"][0]["namespace"], b["subjects"][0]["name"]) for b in bindings) == [
        ("team-a", "digits-server"), ("team-b", "minilm-server")]
    assert all(len(b["subjects"]) == 1 and b["subjects"][0]["kind"] == "ServiceAccount" for b in bindings)


def test_a_listed_entry_must_name_a_model_service():
    out = template({"serverAuth": {"tokenReviewers": [{"namespace": "team-a"}]}}, check=False)
    assert out.returncode != 0 and "name" in out.stderr
