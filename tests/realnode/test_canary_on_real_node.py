"""A canary on the real node: a ModelService of 5 replicas with a canary at 20% runs 4 + 1 server pods, the one
Service's ClusterIP (kube-proxy's iptables rules) sends about a fifth of the connections to the canary, and a
rollback returns all of the traffic to the stable version while a client keeps asking, with no failed request.

The stable version is a cheap artifact (the digits MLP, a fifth of its weights zeroed by a CompressionJob on the node,
written to a hostPath claim), the candidate the builtin MLP it came from: their answers carry different model_version
values (tests/realnode/canary_traffic.py). Six small pods (one torch thread each) share the node's cores.
"""

from __future__ import annotations

import math

import pytest

from tests.cluster.helpers import apply, get, wait_for
from tests.operator.conftest import crds  # noqa: F401  (the operator fixture's)
from tests.operator.test_compression_job_cluster import wait_phase
# namespace, operator: a namespace of its own and the real operator with pool `real` and the node's images
from tests.realnode.test_quickstart_on_real_node import host_path_claim, namespace, operator  # noqa: F401

from .canary_traffic import (
    CANDIDATE_VERSION,
    STABLE_JOB,
    KeepAsking,
    canary_service,
    http_address,
    set_traffic,
    stable_job,
    stable_version,
    versions_answering,
    wait_split,
)
from .node import NODE_NAME

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPLICAS, PERCENT = 5, 20
REQUESTS = 500
# The canary's count among REQUESTS is binomial (each connection picks one of the 5 endpoints uniformly):
# within 4 standard deviations, 20% +- 7.2% of 500, a false alarm about once in 16,000 runs.
SIGMAS = 4
AFTER_ROLLBACK = 100


def test_a_canary_at_20_percent_gets_a_fifth_of_the_requests_and_a_rollback_fails_none(
        control_plane, real_node, operator, namespace, tmp_path):  # noqa: F811
    cp = control_plane
    host_path_claim(cp, namespace, "models", tmp_path / "claim-models")
    apply(cp, namespace, stable_job("models"), canary_service("digits", REPLICAS, PERCENT))
    wait_phase(cp, namespace, STABLE_JOB, "Succeeded", timeout=600)
    stable = stable_version(cp, namespace)

    routed = wait_split(cp, namespace, "digits", 4, 1, PERCENT)
    pods = get(cp, namespace, "pods", "-l", "app.kubernetes.io/instance=digits")["items"]
    assert {pod["spec"]["nodeName"] for pod in pods} == {NODE_NAME}
    assert sorted(routed.values()) == ["canary"] + ["stable"] * 4

    address = http_address(cp, namespace, "digits")
    answered = versions_answering(address, "digits", REQUESTS)
    assert set(answered) == {stable, CANDIDATE_VERSION}, answered
    share = PERCENT / 100
    tolerance = SIGMAS * math.sqrt(REQUESTS * share * (1 - share))
    assert abs(answered[CANDIDATE_VERSION] - REQUESTS * share) <= tolerance, (answered, tolerance)

    # Roll back while a client keeps asking on new connections: the stable side is back to 5 Ready before the
    # canary's pod goes, and no request fails meanwhile.
    with KeepAsking(address, "digits") as client:
        set_traffic(cp, namespace, "digits", 0)
        routed = wait_split(cp, namespace, "digits", REPLICAS, 0, 0)
        answers_then = len(client.answers)
        wait_for("an answer once only the stable pods are routed", lambda: client.answered_after(answers_then),
                 timeout=60)
    assert not client.failures, f"{len(client.failures)} of {len(client.failures) + len(client.answers)} " \
                                f"requests failed during the rollback: {client.failures[:3]}"
    assert set(routed.values()) == {"stable"}
    assert versions_answering(address, "digits", AFTER_ROLLBACK) == {stable: AFTER_ROLLBACK}
    assert get(cp, namespace, "deployment", "digits-canary")["spec"]["replicas"] == 0
