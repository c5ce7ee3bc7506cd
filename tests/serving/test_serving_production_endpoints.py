"""One ModelService with every production endpoint setting on (TLS with client certificates, `auth: kubernetes`,
payload logging and tracing), served by a real `slimserve serve` started exactly as the operator's pod template
says: its command and env, with the pod's mounts and ports mapped onto temporary folders and free loopback ports.
tritonclient calls it over HTTPS and gRPC with ServiceAccount tokens of the real test API server; the allowed
requests reach a real CloudEvents sink and a real OpenTelemetry Collector under the caller's trace id, the refused
ones reach neither."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from payload_sink import Sink, events_of
from serving_helpers import HOST, answers_ok_within, free_port, stop_process
from tests.otelcol.collector import otel_collector  # noqa: F401 - the session's collector
from tests.serving.kube_auth_helpers import allow_token_reviews, apply_documents, auth_namespace, caller_tokens
from tls_certs import SecretDir, make_pki

from slimserve.api.model_service import ModelServiceSpec
from slimserve.controller.builders import model_service as builder
from slimserve.controller.config import OperatorConfig
from slimserve.models.digits import digits_data
from slimserve.serving.payload_log import REQUEST_EVENT, RESPONSE_EVENT
from slimserve.serving.tracing import GRPC_SPAN, REST_SPAN

from tests.operator.conftest import TEST_OPERATOR_CONFIG

pytestmark = pytest.mark.cluster

SERVICE = "digits"
MODEL_URI = "builtin://digits-mlp"
CONFIG = OperatorConfig.model_validate(TEST_OPERATOR_CONFIG)
# The pod's own network namespace becomes loopback; these variables hold its addresses.
ADDRESS_VARIABLES = {"SLIMSERVE_HOST": HOST}
PORT_VARIABLES = ("SLIMSERVE_HTTP_PORT", "SLIMSERVE_GRPC_PORT", "SLIMSERVE_PROBE_PORT")


def model_service_spec(sink_url: str, collector_endpoint: str) -> ModelServiceSpec:
    return ModelServiceSpec.from_json({
        "model": {"uri": MODEL_URI},
        "tls": {"secretName": "digits-tls", "clientAuth": "require"},
        "auth": {"mode": "kubernetes"},
        "payloadLogging": {"url": sink_url},
        "tracing": {"endpoint": collector_endpoint},
    })


def pod_process_env(container: dict, mounts: dict[str, Path]) -> tuple[dict[str, str], dict[str, int]]:
    """The container's env as a local process gets it: mount paths replaced by `mounts`' folders (by volume
    name), the listening address and ports by loopback and free ports; returns (env, ports by variable)."""
    paths = {mount["mountPath"]: mounts[mount["name"]] for mount in container["volumeMounts"]}
    env, ports = {}, {}
    for item in container["env"]:
        assert "valueFrom" not in item, item  # nothing from a Secret in this spec
        name, value = item["name"], item["value"]
        for mount_path, folder in paths.items():
            if value == mount_path or value.startswith(mount_path + "/"):
                value = str(folder) + value[len(mount_path):]
        if name in PORT_VARIABLES:
            ports[name] = free_port()
            value = str(ports[name])
        env[name] = ADDRESS_VARIABLES.get(name, value)
    return env, ports


@pytest.fixture(scope="module")
def cluster_namespace(control_plane):
    yield from auth_namespace(control_plane, "production-endpoints")


@pytest.fixture(scope="module")
def owner(cluster_namespace) -> builder.Owner:
    return builder.Owner(name=SERVICE, namespace=cluster_namespace, uid="0b7c-production-endpoints")


@pytest.fixture(scope="module")
def tokens(control_plane, cluster_namespace):
    return caller_tokens(control_plane, cluster_namespace, SERVICE)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def sink():
    with Sink() as sink:
        yield sink


@pytest.fixture(scope="module")
def server(tmp_path_factory, server_logs, control_plane, owner, tokens, pki, sink, otel_collector):  # noqa: F811
    """The operator's server container for the spec, run as a process; yields its (HTTP, gRPC) addresses."""
    spec = model_service_spec(sink.url, otel_collector.endpoint)
    children = builder.desired_children(owner, spec, builder.ArtifactToServe(MODEL_URI), CONFIG.node_pool(spec.node_pool),
                                        CONFIG, keda_installed=False)
    # The pods' ServiceAccount, Role and RoleBinding as the operator applies them (without the ownerReference to
    # a ModelService that this API server does not have), and the chart's TokenReview grant.
    access = [child for child in children.apply if child["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    for child in access:
        del child["metadata"]["ownerReferences"]
    apply_documents(control_plane, *access)
    account = builder.auth_account_name(owner)
    allow_token_reviews(control_plane, owner.namespace, account)
    (deployment,) = [child for child in children.apply if child["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account
    (container,) = pod["containers"]
    assert container["command"] == ["slimserve", "serve"] and "args" not in container

    work = tmp_path_factory.mktemp("pod")
    secret = SecretDir(work / "tls")
    secret.write(pki.server, pki.ca.pem)
    mounts = {volume["name"]: work / volume["name"] for volume in pod["volumes"]}
    for volume, folder in mounts.items():
        if volume != builder.TLS_VOLUME:
            folder.mkdir()
    env, ports = pod_process_env(container, mounts)
    # The pod's mounted ServiceAccount token, as a kubeconfig for the test API server.
    env["KUBECONFIG"] = str(control_plane.service_account_kubeconfig(owner.namespace, account))
    env["OTEL_BSP_SCHEDULE_DELAY"] = "100"  # the SDK's export interval, in ms: the test waits less
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("SLIMSERVE_")}
    log_path = server_logs / "production-endpoints.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "slimserve.cli.main", "serve"], stdout=log,
                                   stderr=subprocess.STDOUT, env={**inherited, "PYTHONUNBUFFERED": "1", **env})
    try:
        ready = f"http://{HOST}:{ports['SLIMSERVE_PROBE_PORT']}{builder.READY_PATH}"
        assert answers_ok_within(ready, process, 120), log_path.read_text(errors="replace")
        yield f"{HOST}:{ports['SLIMSERVE_HTTP_PORT']}", f"{HOST}:{ports['SLIMSERVE_GRPC_PORT']}"
    finally:
        stop_process(process, 1)  # the pod's shutdown delay (SLIMSERVE_SHUTDOWN_DELAY_S) is not under test here


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def a_digit() -> tuple[np.ndarray, int]:
    data = digits_data()
    return data.x_test[:1], int(data.y_test[0])


def call(protocol: str, server, pki, token: str | None, request_id: str, trace: str) -> int:
    """One inference by tritonclient over TLS with the client certificate; the predicted digit."""
    http_address, grpc_address = server
    pixels, _label = a_digit()
    cert, key = pki.client_files()
    headers = {"x-request-id": request_id, "traceparent": trace, **({"authorization": f"Bearer {token}"} if token else {})}
    if protocol == "rest":
        client = httpclient.InferenceServerClient(
            http_address, ssl=True, ssl_options={"ca_certs": str(pki.ca_file), "certfile": str(cert), "keyfile": str(key)})
        tensor = httpclient.InferInput("input", list(pixels.shape), "FP32")
    else:
        client = grpcclient.InferenceServerClient(grpc_address, ssl=True, root_certificates=str(pki.ca_file),
                                                  private_key=str(key), certificate_chain=str(cert))
        tensor = grpcclient.InferInput("input", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    try:
        return int(client.infer(SERVICE, [tensor], headers=headers).as_numpy("logits").argmax())
    finally:
        client.close()


REFUSED = {  # (token, status of each protocol)
    "stranger": {"rest": "403", "grpc": "StatusCode.PERMISSION_DENIED"},
    None: {"rest": "401", "grpc": "StatusCode.UNAUTHENTICATED"},
}


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_a_caller_with_the_right_is_answered_logged_and_traced_and_others_are_refused_unlogged(
    protocol, server, pki, tokens, sink, otel_collector,  # noqa: F811
):
    refused_ids = []
    for account, statuses in REFUSED.items():
        request_id = f"{protocol}-refused-{account}"
        with pytest.raises(httpclient.InferenceServerException if protocol == "rest" else grpcclient.InferenceServerException) as refused:
            call(protocol, server, pki, tokens.get(account), request_id, traceparent()[0])
        assert refused.value.status() == statuses[protocol], refused.value
        refused_ids.append(request_id)

    header, trace_id, parent = traceparent()
    request_id = f"{protocol}-allowed"
    assert call(protocol, server, pki, tokens["reader"], request_id, header) == a_digit()[1]

    events = events_of(sink, request_id)  # one sender, in order: what was refused before it would be there now
    assert set(events) == {REQUEST_EVENT, RESPONSE_EVENT}
    assert events[REQUEST_EVENT][0].get_source().endswith(f"/modelservices/{SERVICE}")
    assert not any(sink.by_id(rid) for rid in refused_ids)

    def server_span(spans: list[dict]) -> list[dict]:
        return [span for span in spans if span["traceId"] == trace_id and span.get("parentSpanId") == parent]

    (span,) = server_span(otel_collector.wait_for_spans(server_span))
    assert span["name"] == (REST_SPAN if protocol == "rest" else GRPC_SPAN)
    assert span["resource"]["service.name"] == {"stringValue": SERVICE}
