"""A ModelService that scales to zero on the real node, and requests that reach it through the KEDA HTTP add-on's
interceptor (tests/autoscaling/components.py). Used by tests/autoscaling/test_scale_from_zero_on_real_node.py and
benchmarks/scale_from_zero.py."""

from __future__ import annotations

import json

from tests.cluster.helpers import get
from tests.operator.test_model_service_cluster import status_of
from tests.realnode.canary_traffic import CANDIDATE_URI, INFER, SMALL_POD
from tests.realnode.node import POOL
from tests.serving.serving_helpers import request

from .components import INTERCEPTOR_HOLD_SECONDS, KedaHttpAddOn


# How long such a service waits without requests before its last replica goes (the autoscalers' default is 300 s).
SCALE_DOWN_DELAY_SECONDS = 20


def to_zero_service(name: str) -> dict:
    """The builtin digits MLP on one small pod of pool `real` at most, none without requests for a while."""
    return {
        "apiVersion": "slimserve.io/v1alpha1", "kind": "ModelService", "metadata": {"name": name},
        "spec": {"model": {"uri": CANDIDATE_URI}, "nodePool": POOL, "resources": SMALL_POD,
                 "autoscaling": {"metric": "concurrency", "minReplicas": 0, "maxReplicas": 1, "target": 1,
                                 "scaleDownDelaySeconds": SCALE_DOWN_DELAY_SECONDS}},
    }


def replicas(cp, namespace: str, name: str) -> int:
    return get(cp, namespace, "deployment", name)["spec"].get("replicas", 1)


def server_pods(cp, namespace: str, name: str) -> list[dict]:
    selector = get(cp, namespace, "deployment", name)["spec"]["selector"]["matchLabels"]
    return get(cp, namespace, "pods", "-l", ",".join(f"{k}={v}" for k, v in selector.items()))["items"]


def at_zero(cp, namespace: str, name: str) -> bool:
    return replicas(cp, namespace, name) == 0 and not server_pods(cp, namespace, name)


def route_to(keda: KedaHttpAddOn, cp, namespace: str, name: str) -> str:
    """The Host header that routes to the service through the interceptor (its status says), once the interceptor
    resolves the service's name."""
    keda.route(name, get(cp, namespace, "service", name)["spec"]["clusterIP"])
    return status_of(cp, namespace, name)["hostHeader"]


def infer(keda: KedaHttpAddOn, host: str, name: str) -> tuple[int, dict[str, str], dict | bytes]:
    """One infer request through the interceptor, waiting as long as it may hold the request: status, headers, the
    answer (the body's bytes when it is not JSON)."""
    code, headers, body = request(keda.proxy_address, "POST", f"/v2/models/{name}/infer", json.dumps(INFER).encode(),
                                  {"Host": host, "Content-Type": "application/json"},
                                  timeout=INTERCEPTOR_HOLD_SECONDS + 30)
    try:
        return code, headers, json.loads(body)
    except ValueError:
        return code, headers, body
