"""gRPC-Web over TLS: the reference client runtime (npm grpc-web, in Node) calls a server with --tls-dir on
its HTTPS port, trusting the server's CA; a client that does not trust it is refused by its own TLS check."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.serving.tls_certs import SecretDir, TlsServer, make_pki
from tests.web.web_helpers import NODE_PROJECT, PROTO, run_node

NOT_FOUND = 5


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_web_server(tmp_path_factory, web_logs, pki):
    secret = SecretDir(tmp_path_factory.mktemp("secret") / "tls")
    secret.write(pki.server, pki.ca.pem)
    server = TlsServer(web_logs, secret, "none", "--grpc-web").start()
    try:
        yield server
    finally:
        server.stop()


def call_spec(server) -> dict:
    digit = [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [8.0] * 64}]
    return {"url": f"https://{server.http_url}", "proto": str(PROTO), "model": "digits-mlp", "format": "binary",
            "inputs": digit}


def test_reference_grpc_web_client_over_tls(node_project, tls_web_server, pki):
    answer = run_node("grpc_web_call.js", call_spec(tls_web_server), env={"NODE_EXTRA_CA_CERTS": str(pki.ca_file)})
    assert answer["modelMetadata"]["name"] == "digits-mlp"
    outputs = {output["name"]: output for output in answer["infer"]["outputs"]}
    assert outputs["logits"]["shape"] == [1, 10] and len(outputs["label"]["data"]) == 1
    assert answer["unknownModelError"]["code"] == NOT_FOUND


def test_a_grpc_web_client_that_does_not_trust_the_ca_is_refused(node_project, tls_web_server):
    done = subprocess.run(["node", "grpc_web_call.js", json.dumps(call_spec(tls_web_server))], cwd=NODE_PROJECT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    # No HTTP answer at all (status 0): the client's TLS check refused the server before any request went out.
    assert "gRPC-Web call failed" in done.stderr and "http status code: 0" in done.stderr, done.stderr
