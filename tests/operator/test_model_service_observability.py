"""spec.payloadLogging and spec.tracing on the real control plane: the operator writes them into the server
pods' variables, which `slimserve serve` reads back as the same settings; off, none is left; a sample rate or
URL the server could not use is refused by the API server, naming the field."""

from __future__ import annotations

import argparse
import json

import pytest

from slimserve.cli import serve
from slimserve.serving.observability import (
    PayloadLogSettings, TracingSettings, payload_log_settings, tracing_settings,
)
from tests.cluster.helpers import apply, exists, get, wait_for
from tests.operator.test_model_service_cluster import model_service

pytestmark = pytest.mark.cluster

SINK = "http://message-dumper.observability.svc.cluster.local/events"
COLLECTOR = "http://otel-collector.observability:4317"


def server_environ(cp, namespace: str, name: str) -> dict[str, str]:
    """The server container's variables; none before the operator has made the Deployment."""
    if not exists(cp, namespace, "deployment", name):
        return {}
    container = get(cp, namespace, "deployment", name)["spec"]["template"]["spec"]["containers"][0]
    return {entry["name"]: entry["value"] for entry in container["env"] if "value" in entry}


def served_settings(environ: dict[str, str]) -> tuple[PayloadLogSettings | None, TracingSettings | None]:
    """What `slimserve serve` makes of a pod's variables."""
    parser = argparse.ArgumentParser(prog="slimserve")
    serve.register(parser.add_subparsers(dest="command"), environ=environ)
    args = parser.parse_args(["serve"])
    return payload_log_settings(args), tracing_settings(args)


def test_the_pods_get_the_payload_log_and_tracing_settings_and_lose_them_when_off(control_plane, operator, namespace):
    cp, name = control_plane, "observed"
    apply(cp, namespace, model_service(name, payloadLogging={"url": SINK, "mode": "request", "sampleRate": 0.25},
                                       tracing={"endpoint": COLLECTOR, "sampleRate": 0.1}))
    environ = wait_for("the server's payload log variables",
                       lambda: (env := server_environ(cp, namespace, name)).get("SLIMSERVE_PAYLOAD_LOG_URL") and env)
    assert served_settings(environ) == (
        PayloadLogSettings(SINK, "request", 0.25, service=name, namespace=namespace),
        TracingSettings(COLLECTOR, 0.1, service_name=name),
    )

    apply(cp, namespace, model_service(name, tracing={"endpoint": COLLECTOR}))
    environ = wait_for("the payload log variables gone",
                       lambda: "SLIMSERVE_PAYLOAD_LOG_URL" not in (env := server_environ(cp, namespace, name)) and env)
    assert served_settings(environ) == (None, TracingSettings(COLLECTOR, 1.0, service_name=name))

    apply(cp, namespace, model_service(name))
    environ = wait_for("the tracing variables gone",
                       lambda: "SLIMSERVE_TRACING_ENDPOINT" not in (env := server_environ(cp, namespace, name)) and env)
    assert served_settings(environ) == (None, None)
    assert not any(key.startswith(("SLIMSERVE_PAYLOAD_LOG_", "SLIMSERVE_TRACING_", "SLIMSERVE_SERVICE_"))
                   for key in environ)


@pytest.mark.parametrize("spec, field", [
    ({"payloadLogging": {"url": SINK, "sampleRate": 0}}, "spec.payloadLogging.sampleRate"),
    ({"payloadLogging": {"url": "ftp://sink/events"}}, "spec.payloadLogging.url"),
    ({"payloadLogging": {"url": SINK, "mode": "everything"}}, "spec.payloadLogging.mode"),
    ({"tracing": {"endpoint": COLLECTOR, "sampleRate": 1.5}}, "spec.tracing.sampleRate"),
    ({"tracing": {"endpoint": "otel-collector:4317"}}, "spec.tracing.endpoint"),
])
def test_settings_the_server_could_not_use_are_refused_naming_the_field(control_plane, crds, namespace, spec, field):
    out = control_plane.kubectl("apply", "-n", namespace, "-f", "-", check=False,
                                input=json.dumps(model_service("refused", **spec)))
    assert out.returncode != 0
    assert field in out.stderr
