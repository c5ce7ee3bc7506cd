"""Autoscaling components as host processes beside the real node (tests/realnode), against the test control plane.

``MetricsServer.start(control_plane, node)`` runs metrics-server (built by tests/autoscaling/build.sh) with an
identity and RBAC of its own, and registers it as the aggregated API ``metrics.k8s.io``: the APIService names a
Service whose endpoint is metrics-server's listener on the node's bridge address, which the API server (on the
host) reaches through the ClusterIP as kube-proxy routes it. Its serving certificate is issued by the cluster's CA,
which the APIService trusts; it trusts the kubelet's self-signed serving certificate, and reaches the kubelet (on
loopback) by the node's host name, which only its own mount namespace's /etc/hosts resolves.
"""

from __future__ import annotations

import base64
import ipaddress
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import yaml

from tests.cluster.controlplane import ClusterError, _free_port, _Process, _signed
from tests.cluster.helpers import wait_for
from tests.realnode.node import GATEWAY, POOL, POOL_LABEL, RealNode

BUILD_SCRIPT = Path(__file__).resolve().parent / "build.sh"
METRICS_API = "v1beta1.metrics.k8s.io"


def binary(name: str) -> Path:
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "--print-bin", name], check=True, text=True,
                         capture_output=True)
    return Path(out.stdout.strip())


def missing(*names: str) -> str | None:
    """Why these components cannot run, or None."""
    absent = [name for name in names if not binary(name).is_file()]
    if absent:
        return f"{', '.join(absent)} not built (tests/autoscaling/build.sh)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing"
    return None


def serving_certificate(cp, name: str, dns_name: str, directory: Path) -> tuple[Path, Path]:
    """A serving certificate for `dns_name` (and the bridge's address) issued by the cluster's CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    pki = cp.workdir / "pki"
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    cert, key = _signed(ca_cert, ca_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]),
                        server=True, sans=[x509.DNSName(dns_name), x509.IPAddress(ipaddress.ip_address(GATEWAY))])
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def with_hosts(hosts: Path, argv: list[str]) -> list[str]:
    """`argv` in a mount namespace of its own whose /etc/hosts is `hosts` (the host's stays as it is)."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts), *argv]


def serves_tls(cp, host: str, port: int, server_name: str) -> bool:
    """Whether `host`:`port` completes a TLS handshake as `server_name` with a certificate of the cluster's CA."""
    context = ssl.create_default_context(cafile=str(cp.workdir / "pki" / "ca.crt"))
    try:
        with socket.create_connection((host, port), timeout=2) as raw, \
                context.wrap_socket(raw, server_hostname=server_name):
            return True
    except (OSError, ssl.SSLError):
        return False


def aggregated_api(cp, process: _Process, *, name: str, namespace: str, group: str, version: str, port: int) -> None:
    """The APIService for group/version, served by `process` listening on the bridge's address:`port`.

    The APIService is made only once kube-proxy routes the Service's ClusterIP to the listener: the aggregator keeps
    its connection for the availability check alive, and one made before the route existed went out of the host's
    default route and stayed there (here a 404 from the network's egress for every later check)."""
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
         "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{name}-host", "namespace": namespace,
                      "labels": {"kubernetes.io/service-name": name,
                                 "endpointslice.kubernetes.io/managed-by": "tests.autoscaling"}},
         "addressType": "IPv4", "endpoints": [{"addresses": [GATEWAY], "conditions": {"ready": True}}],
         "ports": [{"name": "https", "port": port, "protocol": "TCP"}]},
    ]))
    cluster_ip = yaml.safe_load(cp.kubectl("get", "service", "-n", namespace, name, "-o", "json").stdout)["spec"]["clusterIP"]
    wait_for(f"kube-proxy to route {cluster_ip}:443 to {process.name}",
             lambda: serves_tls(cp, cluster_ip, 443, f"{name}.{namespace}.svc"), timeout=60, interval=0.5)
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": f"{version}.{group}"},
         "spec": {"group": group, "version": version, "groupPriorityMinimum": 100, "versionPriority": 100,
                  "service": {"name": name, "namespace": namespace, "port": 443},
                  "caBundle": base64.b64encode((cp.workdir / "pki" / "ca.crt").read_bytes()).decode()}},
    ]))

    def availability() -> dict:
        out = cp.kubectl("get", "apiservice", f"{version}.{group}", "-o", "json", check=False)
        conditions = yaml.safe_load(out.stdout).get("status", {}).get("conditions", []) if out.returncode == 0 else []
        return next((c for c in conditions if c["type"] == "Available"), {})

    try:
        wait_for(f"APIService {version}.{group} to be Available",
                 lambda: process.popen.poll() is not None or availability().get("status") == "True", timeout=60)
        if process.popen.poll() is not None:
            raise AssertionError(f"{process.name} exited {process.popen.returncode}")
    except AssertionError as error:
        raise ClusterError(f"{error}: {availability().get('message')}\n{process.tail()}") from None


METRICS_SERVER_RBAC = [
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "slimserve-test:metrics-server"},
     "rules": [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
               {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "slimserve-test:metrics-server"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "slimserve-test:metrics-server"},
     "subjects": [{"kind": "User", "name": "system:metrics-server"}]},
    # Delegated authentication and authorization of the aggregator's requests, as every extension API server.
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "slimserve-test:metrics-server:auth-delegator"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
     "subjects": [{"kind": "User", "name": "system:metrics-server"}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
     "metadata": {"name": "slimserve-test:metrics-server:auth-reader", "namespace": "kube-system"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "extension-apiserver-authentication-reader"},
     "subjects": [{"kind": "User", "name": "system:metrics-server"}]},
]


class MetricsServer:
    """metrics-server scraping the real node's kubelet, served to the cluster as metrics.k8s.io."""

    def __init__(self, cp, node: RealNode, workdir: Path):
        self.cp, self.node, self.workdir = cp, node, workdir
        self.process: _Process | None = None

    @classmethod
    def start(cls, cp, node: RealNode, workdir: Path) -> "MetricsServer":
        server = cls(cp, node, workdir)
        try:
            server._start()
        except BaseException:
            server.stop()
            raise
        return server

    def _start(self) -> None:
        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        self.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(METRICS_SERVER_RBAC))
        kubeconfig = self.cp.client_kubeconfig("metrics-server", "system:metrics-server")
        cert, key = serving_certificate(self.cp, "metrics-server", "metrics-server.kube-system.svc", w / "pki")
        hosts = w / "hosts"
        hosts.write_text(f"127.0.0.1 localhost {self.node.name}\n")
        port = _free_port()
        argv = [
            str(binary("metrics-server")),
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={GATEWAY}", f"--secure-port={port}", f"--tls-cert-file={cert}",
            f"--tls-private-key-file={key}",
            # The kubelet listens on loopback under its node name; its certificate is self-signed for that name.
            "--kubelet-preferred-address-types=Hostname", "--kubelet-use-node-status-port",
            f"--kubelet-certificate-authority={self.node.workdir / 'kubelet-pki' / 'kubelet.crt'}",
            f"--node-selector={POOL_LABEL}={POOL}",  # the kwok nodes have no kubelet to scrape
            "--metric-resolution=10s", "--kubelet-request-timeout=5s", "--v=1",  # the shortest it allows
        ]
        self.process = _Process("metrics-server", with_hosts(hosts, argv), w / "metrics-server.log")
        if self.process.popen.poll() is not None:
            raise ClusterError(f"metrics-server exited at once:\n{self.process.tail()}")
        aggregated_api(self.cp, self.process, name="metrics-server", namespace="kube-system", group="metrics.k8s.io",
                       version="v1beta1", port=port)

    def stop(self) -> None:
        self.cp.kubectl("delete", "apiservice", METRICS_API, "--ignore-not-found", check=False)
        self.cp.kubectl("delete", "-n", "kube-system", "service/metrics-server", "endpointslice/metrics-server-host",
                        "--ignore-not-found", check=False)
        self.cp.kubectl("delete", "-f", "-", "--ignore-not-found", input=yaml.safe_dump_all(METRICS_SERVER_RBAC),
                        check=False)
        if self.process is not None:
            self.process.stop()
            self.process.close()
