"""TLS on a real `slimserve serve`: tritonclient over HTTPS and gRPC with TLS, client certificates (mTLS), the
probe port, bad certificates on either side, and certificate rotation while requests run."""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from cryptography import x509

from serving_helpers import HOST, metric_samples, request
from tls_certs import SecretDir, TlsServer, make_pki

MODEL = "digits-mlp"
ROWS = np.random.default_rng(1).random((2, 64), dtype=np.float32) * 16
RELOADS_FAILED = 'slimserve_tls_reloads_total{result="failed"}'


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_server(tmp_path_factory, server_logs, pki, client_auth: str, issued=None):
    secret = SecretDir(tmp_path_factory.mktemp("secret") / "tls")
    secret.write(issued or pki.server, pki.ca.pem)
    server = TlsServer(server_logs, secret, client_auth).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, server_logs, pki):
    """TLS, client certificates optional."""
    yield from _tls_server(tmp_path_factory, server_logs, pki, "optional")


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory, server_logs, pki):
    """TLS, client certificates required."""
    yield from _tls_server(tmp_path_factory, server_logs, pki, "require")


def http_client(server, pki, *, client_cert=True, stranger_cert=False, ca_file=None):
    options = {"ca_certs": str(ca_file or pki.ca_file)}
    if client_cert:
        cert, key = pki.client_files(stranger=stranger_cert)
        options.update(certfile=str(cert), keyfile=str(key))
    return httpclient.InferenceServerClient(server.http_url, ssl=True, ssl_options=options)


def grpc_client(server, pki, *, client_cert=True, ca_file=None):
    cert, key = pki.client_files()
    kwargs = {"private_key": str(key), "certificate_chain": str(cert)} if client_cert else {}
    return grpcclient.InferenceServerClient(server.grpc_url, ssl=True, root_certificates=str(ca_file or pki.ca_file),
                                            **kwargs)


def http_infer(client) -> np.ndarray:
    tensor = httpclient.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    return client.infer(MODEL, [tensor]).as_numpy("logits")


def grpc_infer(client) -> np.ndarray:
    tensor = grpcclient.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    return client.infer(MODEL, [tensor], client_timeout=30).as_numpy("logits")


def client_context(pki, *, client_cert=True, alpn="http/1.1") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca_file)
    if client_cert:
        context.load_cert_chain(*pki.client_files())
    context.set_alpn_protocols([alpn])
    return context


def served_serial(port: int, context: ssl.SSLContext) -> int:
    """The serial of the certificate a fresh handshake on `port` gets."""
    with socket.create_connection((HOST, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=HOST) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def test_tritonclient_http_and_grpc_over_tls_without_a_client_certificate(tls_server, pki, reference_model):
    expected = reference_model(f"builtin://{MODEL}").predict({"input": ROWS})["logits"]
    np.testing.assert_allclose(http_infer(http_client(tls_server, pki, client_cert=False)), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grpc_infer(grpc_client(tls_server, pki, client_cert=False)), expected, rtol=1e-4, atol=1e-4)
    assert served_serial(tls_server.http_port, client_context(pki, client_cert=False)) == pki.server.serial


def test_a_kubelet_probe_over_https_needs_no_client_certificate_when_optional(tls_server):
    # The kubelet's httpGet with scheme HTTPS verifies nothing and presents no certificate.
    kubelet = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    kubelet.check_hostname, kubelet.verify_mode = False, ssl.CERT_NONE
    assert https_get(tls_server, kubelet) == 200


def https_get(server, context: ssl.SSLContext, path: str = "/v2/health/ready") -> int:
    connection = http.client.HTTPSConnection(HOST, server.http_port, context=context, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def stranger_context(pki) -> ssl.SSLContext:
    context = client_context(pki, client_cert=False)
    context.load_cert_chain(*pki.client_files(stranger=True))
    return context


# TLS 1.3 sends the server's verdict on a client certificate after the client's side of the handshake; the
# event loop closes the connection without flushing the alert, so the client sees the connection end unanswered.
REFUSED_BY_THE_SERVER = (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)


def test_optional_still_refuses_a_client_certificate_of_another_ca(tls_server, pki, reference_model):
    with pytest.raises(REFUSED_BY_THE_SERVER):
        https_get(tls_server, stranger_context(pki))
    with pytest.raises(Exception, match="connection closed"):
        http_infer(http_client(tls_server, pki, stranger_cert=True))
    assert https_get(tls_server, client_context(pki)) == 200  # the same client with the right certificate
    # The gRPC port too: a stranger's certificate ends the handshake, the CA's is served.
    stranger_cert, stranger_key = pki.client_files(stranger=True)
    credentials = grpc.ssl_channel_credentials(pki.ca_file.read_bytes(), stranger_key.read_bytes(),
                                               stranger_cert.read_bytes())
    with grpc.secure_channel(tls_server.grpc_url, credentials) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    expected = reference_model(f"builtin://{MODEL}").predict({"input": ROWS})["logits"]
    np.testing.assert_allclose(grpc_infer(grpc_client(tls_server, pki)), expected, rtol=1e-4, atol=1e-4)


def test_a_client_trusting_another_ca_fails_the_handshake_clearly(tls_server, pki):
    with pytest.raises(ssl.SSLCertVerificationError, match=r"\[SSL: CERTIFICATE_VERIFY_FAILED\] certificate verify failed"):
        http_infer(http_client(tls_server, pki, client_cert=False, ca_file=pki.stranger_ca_file))
    with pytest.raises(Exception) as caught:
        grpc_infer(grpc_client(tls_server, pki, client_cert=False, ca_file=pki.stranger_ca_file))
    assert "StatusCode.UNAVAILABLE" in str(caught.value)
    assert re.search(r"(?i)handshake|certificate verify failed|ssl", str(caught.value))


def test_mtls_serves_a_client_with_a_certificate_on_both_protocols(mtls_server, pki, reference_model):
    expected = reference_model(f"builtin://{MODEL}").predict({"input": ROWS})["logits"]
    np.testing.assert_allclose(http_infer(http_client(mtls_server, pki)), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grpc_infer(grpc_client(mtls_server, pki)), expected, rtol=1e-4, atol=1e-4)


def test_mtls_refuses_a_client_without_a_certificate_on_both_protocols(mtls_server, pki):
    with pytest.raises(REFUSED_BY_THE_SERVER):
        https_get(mtls_server, client_context(pki, client_cert=False))
    with pytest.raises(Exception, match="connection closed"):
        http_infer(http_client(mtls_server, pki, client_cert=False))
    with pytest.raises(Exception, match="StatusCode.UNAVAILABLE"):
        grpc_infer(grpc_client(mtls_server, pki, client_cert=False))
    with pytest.raises(REFUSED_BY_THE_SERVER):
        https_get(mtls_server, stranger_context(pki))


def test_the_probe_port_answers_health_and_metrics_in_plain_http_and_nothing_else(mtls_server):
    assert request(mtls_server.probe_url, "GET", "/v2/health/live")[0] == 200
    assert request(mtls_server.probe_url, "GET", "/v2/health/ready")[0] == 200
    assert "slimserve_inflight_requests" in request(mtls_server.probe_url, "GET", "/metrics")[2].decode()
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]})
    status, _headers, answer = request(mtls_server.probe_url, "POST", f"/v2/models/{MODEL}/infer", body.encode())
    assert status == 404 and b"probe port" in answer
    assert request(mtls_server.probe_url, "GET", f"/v2/models/{MODEL}")[0] == 404


def test_an_expired_server_certificate_fails_the_clients_handshake(tmp_path_factory, server_logs, pki):
    running = _tls_server(tmp_path_factory, server_logs, pki, "none", issued=pki.expired_server)
    server = next(running)
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
            http_infer(http_client(server, pki, client_cert=False))
        with pytest.raises(Exception) as caught:
            grpc_infer(grpc_client(server, pki, client_cert=False))
        assert "StatusCode.UNAVAILABLE" in str(caught.value)
    finally:
        running.close()


def wait_for(predicate, timeout_s: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class ClientLoop(threading.Thread):
    """Requests on fresh connections until stopped: HTTPS (recording each handshake's serial) or gRPC."""

    def __init__(self, server, pki, protocol: str) -> None:
        super().__init__(daemon=True)
        self.server, self.pki, self.protocol = server, pki, protocol
        self.serials: list[int] = []
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        context = client_context(self.pki)
        body = json.dumps({"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32",
                                       "data": ROWS.reshape(-1).tolist()}]})
        while not self.done.is_set():
            try:
                if self.protocol == "grpc":
                    grpc_infer(grpc_client(self.server, self.pki))
                    self.serials.append(0)
                    continue
                connection = http.client.HTTPSConnection(HOST, self.server.http_port, context=context, timeout=30)
                connection.request("POST", f"/v2/models/{MODEL}/infer", body, {"Content-Type": "application/json"})
                answer = connection.getresponse()
                answer.read()
                cert = connection.sock.getpeercert(binary_form=True)
                connection.close()
                if answer.status != 200:
                    self.failures.append(f"HTTP {answer.status}")
                self.serials.append(x509.load_der_x509_certificate(cert).serial_number)
            except Exception as error:  # noqa: BLE001 - every failure is the test's finding
                self.failures.append(f"{type(error).__name__}: {error}")

    def stop(self) -> None:
        self.done.set()
        self.join(60)


def test_rotation_while_requests_run_fails_none_and_new_handshakes_get_the_new_certificate(mtls_server, pki):
    rotated = pki.ca.issue("localhost", server=True)
    loops = [ClientLoop(mtls_server, pki, "https"), ClientLoop(mtls_server, pki, "grpc")]
    for loop in loops:
        loop.start()
    wait_for(lambda: all(loop.serials for loop in loops), what="requests before the swap")
    mtls_server.secret.write(rotated, pki.ca.pem)
    https = loops[0]
    wait_for(lambda: rotated.serial in https.serials, what="a handshake with the rotated certificate")
    settled = len(https.serials)
    wait_for(lambda: len(https.serials) > settled + 5 and len(loops[1].serials) > 5, what="requests after the swap")
    for loop in loops:
        loop.stop()
    assert [loop.failures for loop in loops] == [[], []]
    assert set(https.serials) <= {pki.server.serial, rotated.serial}
    assert set(https.serials[settled:]) == {rotated.serial}  # no handshake after the swap got the old one
    assert served_serial(mtls_server.grpc_port, client_context(pki, alpn="h2")) == rotated.serial
    mtls_server.secret.write(pki.server, pki.ca.pem)  # back to the first, for the tests after this one
    wait_for(lambda: served_serial(mtls_server.http_port, client_context(pki)) == pki.server.serial,
             what="the first certificate back")


def test_a_bad_new_pair_keeps_the_old_certificate_logs_and_counts(mtls_server, pki):
    failed_before = metric_samples(mtls_server.probe_url).get(RELOADS_FAILED, 0)
    other = pki.ca.issue("localhost", server=True)
    mtls_server.secret.write(other, pki.ca.pem, key_pem=pki.client.key_pem)  # a key of another certificate
    wait_for(lambda: metric_samples(mtls_server.probe_url).get(RELOADS_FAILED, 0) > failed_before,
             what="the failed reload counted")
    assert "the key does not match the certificate" in mtls_server.log()
    assert served_serial(mtls_server.http_port, client_context(pki)) == pki.server.serial
    assert served_serial(mtls_server.grpc_port, client_context(pki, alpn="h2")) == pki.server.serial
    http_infer(http_client(mtls_server, pki))
    assert mtls_server.process.poll() is None


def test_a_new_client_ca_replaces_the_old_one_without_a_restart(mtls_server, pki):
    def answers(context) -> bool:
        try:
            return https_get(mtls_server, context) == 200
        except REFUSED_BY_THE_SERVER:
            return False

    assert answers(client_context(pki)) and not answers(stranger_context(pki))
    mtls_server.secret.write(pki.server, pki.stranger_ca.pem)  # ca.crt now names only the other CA
    wait_for(lambda: answers(stranger_context(pki)), what="a client of the new CA served")
    assert not answers(client_context(pki))  # the CA taken out of ca.crt is no longer trusted
    mtls_server.secret.write(pki.server, pki.ca.pem)
    wait_for(lambda: answers(client_context(pki)), what="the first CA back")
