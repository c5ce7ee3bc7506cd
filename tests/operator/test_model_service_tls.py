"""spec.tls on the real control plane: the operator checks the Secret's keys (from its metadata) before it
rolls pods, says what is missing in the ModelService's status, and once the Secret is right mounts it read-only,
points the server at it and sends the probes where they can pass."""

from __future__ import annotations

import base64

import pytest

from slimserve.controller.builders import model_service as builders
from tests.cluster.helpers import apply, condition, exists, get
from tests.operator.test_model_service_cluster import model_service, status_of, wait_condition, wait_ready
from tests.serving.tls_certs import make_pki

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_secret(name: str, pki, *, ca: bool) -> dict:
    data = {"tls.crt": pki.server.cert_pem, "tls.key": pki.server.key_pem} | ({"ca.crt": pki.ca.pem} if ca else {})
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "data": {key: base64.b64encode(value).decode() for key, value in data.items()}}


def server_container(cp, namespace: str, name: str) -> tuple[dict, dict]:
    pod = get(cp, namespace, "deployment", name)["spec"]["template"]
    return pod, pod["spec"]["containers"][0]


def env_of(container: dict) -> dict[str, str]:
    return {entry["name"]: entry.get("value") for entry in container["env"]}


def test_a_missing_secret_is_a_condition_and_the_pods_come_once_it_exists(control_plane, operator, namespace, pki):
    cp, name = control_plane, "tls-later"
    apply(cp, namespace, model_service(name, tls={"secretName": f"{name}-cert"}))
    ready = wait_condition(cp, namespace, name, "Ready", "False", "TLSSecretMissing")
    assert f"spec.tls.secretName: Secret '{name}-cert' does not exist" in ready["message"]
    assert condition(status_of(cp, namespace, name), "Stalled")["status"] == "False"  # the Secret may yet come
    assert not exists(cp, namespace, "deployment", name)  # nothing rolled on a Secret that is not there

    apply(cp, namespace, tls_secret(f"{name}-cert", pki, ca=False))
    wait_ready(cp, namespace, name)
    pod, container = server_container(cp, namespace, name)
    volume = {"name": builders.TLS_VOLUME,
              "secret": {"secretName": f"{name}-cert", "optional": True, "defaultMode": 0o440}}
    assert volume in pod["spec"]["volumes"]
    assert {"name": builders.TLS_VOLUME, "mountPath": builders.TLS_MOUNT, "readOnly": True} in container["volumeMounts"]
    env = env_of(container)
    assert (env["SLIMSERVE_TLS_DIR"], env["SLIMSERVE_TLS_CLIENT_AUTH"]) == (builders.TLS_MOUNT, "none")
    assert "SLIMSERVE_PROBE_PORT" not in env
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS" and container[probe]["httpGet"]["port"] == "http"
    assert pod["metadata"]["annotations"]["prometheus.io/scheme"] == "https"
    assert status_of(cp, namespace, name)["url"].startswith(f"https://{name}.{namespace}.svc.")
    ports = get(cp, namespace, "service", name)["spec"]["ports"]
    assert [port["appProtocol"] for port in ports] == ["https", "grpc"]


def test_client_auth_needs_the_ca_and_sends_probes_to_the_plain_port(control_plane, operator, namespace, pki):
    cp, name = control_plane, "tls-mutual"
    apply(cp, namespace, tls_secret(f"{name}-cert", pki, ca=False))
    apply(cp, namespace, model_service(name, tls={"secretName": f"{name}-cert", "clientAuth": "require"}))
    ready = wait_condition(cp, namespace, name, "Ready", "False", "TLSSecretInvalid")
    assert ready["message"] == (f"spec.tls.secretName: Secret '{name}-cert' has no ca.crt "
                                "(clientAuth require verifies client certificates with it)")
    assert not exists(cp, namespace, "deployment", name)

    apply(cp, namespace, tls_secret(f"{name}-cert", pki, ca=True))
    wait_ready(cp, namespace, name)
    pod, container = server_container(cp, namespace, name)
    env = env_of(container)
    assert (env["SLIMSERVE_TLS_CLIENT_AUTH"], env["SLIMSERVE_PROBE_PORT"]) == ("require", str(builders.PROBE_PORT))
    assert {"name": "probes", "containerPort": builders.PROBE_PORT, "protocol": "TCP"} in container["ports"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get_ = container[probe]["httpGet"]
        assert (get_["port"], get_["scheme"]) == ("probes", "HTTP")  # plain: the API server's default scheme
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(builders.PROBE_PORT)
