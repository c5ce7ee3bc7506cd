"""spec.generation on the real control plane: the operator writes a decoder's bounds into its server pods'
variables, which `slimserve serve` reads back as the same GenerationOptions; limits no server could honour,
and limits on a builtin model that is no decoder, are refused by the API server naming the field."""

from __future__ import annotations

import json

import pytest

from tests.cluster.helpers import apply, wait_for
from tests.decoder.test_generation_limits import LIMITS, SERVED, served_options
from tests.operator.test_model_service_cluster import model_service
from tests.operator.test_model_service_observability import server_environ

pytestmark = pytest.mark.cluster


def test_the_pods_get_the_generation_limits(control_plane, operator, namespace):
    cp, name = control_plane, "lm"
    apply(cp, namespace, model_service(name, model={"uri": "builtin://tiny-lm"}, generation=LIMITS))
    environ = wait_for("the server's generation variables",
                       lambda: (env := server_environ(cp, namespace, name)).get("SLIMSERVE_MAX_TOKENS") and env)
    assert served_options(environ) == SERVED


@pytest.mark.parametrize("spec, field", [
    ({"model": {"uri": "builtin://digits-mlp"}, "generation": {"maxSequences": 4}}, "spec.generation"),
    ({"model": {"uri": "builtin://tiny-lm"}, "generation": {"contextLength": 256, "maxTokens": 256}},
     "spec.generation.maxTokens"),
    ({"model": {"uri": "builtin://tiny-lm"}, "generation": {"maxSequences": 0}}, "spec.generation.maxSequences"),
    ({"model": {"uri": "builtin://tiny-lm"}, "generation": {"kvCacheBytes": -1}}, "spec.generation.kvCacheBytes"),
])
def test_generation_limits_no_server_could_honour_are_refused(control_plane, crds, namespace, spec, field):
    out = control_plane.kubectl("apply", "-n", namespace, "-f", "-", check=False,
                                input=json.dumps(model_service("refused", **spec)))
    assert out.returncode != 0
    assert field in out.stderr
