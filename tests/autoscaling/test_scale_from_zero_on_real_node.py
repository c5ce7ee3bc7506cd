"""Scale from zero on the real node: KEDA's operator and the KEDA HTTP add-on (operator, interceptor, scaler) run as
host processes beside it (tests/autoscaling/components.py), and a ModelService with `autoscaling.minReplicas: 0`
owns an HTTPScaledObject. With no request KEDA scales it to zero; a request sent to the interceptor with the
service's host wakes it (the interceptor holds the request until a pod is ready) and is answered by that pod; with no
more requests the add-on scales it back to zero after its scale-down delay (the HTTPScaledObject's scaledownPeriod).
"""

from __future__ import annotations

import pytest

from tests.autoscaling.components import HTTP_ADD_ON_VERSION, KEDA_HTTP_BINARIES, keda_http_add_on, missing
from tests.cluster.helpers import apply, exists, wait_for
from tests.operator.conftest import crds  # noqa: F401  (the operator fixture's)
from tests.operator.test_model_service_cluster import wait_condition
from tests.realnode.node import NODE_NAME
# namespace, operator: a namespace of its own and the real operator with pool `real` and the node's images
from tests.realnode.test_quickstart_on_real_node import namespace, operator  # noqa: F401

from .test_http_add_on_versions import SUPPORTED
from .wake import SCALE_DOWN_DELAY_SECONDS, at_zero, infer, replicas, route_to, server_pods, to_zero_service

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SERVICE = "sleepy"


@pytest.fixture
def keda(control_plane, real_node, namespace):  # noqa: F811
    reason = missing(*KEDA_HTTP_BINARIES)
    if reason:
        pytest.skip(reason)
    with keda_http_add_on(control_plane, namespace, real_node.workdir / "keda", SUPPORTED[HTTP_ADD_ON_VERSION]) as keda:
        yield keda


def test_a_service_at_zero_wakes_for_a_request_and_goes_back_to_zero(control_plane, real_node, keda, operator,  # noqa: F811
                                                                   namespace):  # noqa: F811
    cp = control_plane

    def waiting(what: str, check, timeout: float):
        def alive_and(check=check):
            keda.check_running()
            return check()
        try:
            return wait_for(what, alive_and, timeout=timeout, interval=1)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{keda.logs()}") from None

    apply(cp, namespace, to_zero_service(SERVICE))
    wait_condition(cp, namespace, SERVICE, "AutoscalingReady", "True", "HTTPScaledObject", timeout=120)
    # The add-on's operator makes the ScaledObject; KEDA, asking the add-on's scaler, finds no request.
    waiting("the add-on's ScaledObject", lambda: exists(cp, namespace, "scaledobjects.keda.sh", SERVICE), 120)
    waiting("KEDA to scale the service to zero", lambda: at_zero(cp, namespace, SERVICE), 300)

    host = route_to(keda, cp, namespace, SERVICE)
    code, headers, answer = infer(keda, host, SERVICE)
    assert code == 200, f"{code}: {answer!r:.500}\n{keda.logs()}"
    assert headers.get("x-keda-http-cold-start") == "true"  # the interceptor held it until a pod was ready
    assert answer["model_name"] == SERVICE and "label" in {output["name"] for output in answer["outputs"]}
    (pod,) = server_pods(cp, namespace, SERVICE)
    assert pod["spec"]["nodeName"] == NODE_NAME and replicas(cp, namespace, SERVICE) == 1
    # Now warm: the next request goes straight through.
    code, headers, _ = infer(keda, host, SERVICE)
    assert code == 200 and headers.get("x-keda-http-cold-start") == "false"

    # No more requests: after the scale-down delay without one, back to zero.
    waiting("the service back at zero", lambda: at_zero(cp, namespace, SERVICE), SCALE_DOWN_DELAY_SECONDS + 180)
