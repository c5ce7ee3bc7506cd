"""Autoscaling components as host processes beside the real node (tests/realnode), against the test control plane.

``MetricsServer.start(control_plane, node)`` runs metrics-server (built by tests/autoscaling/build.sh) with an
identity and RBAC of its own, and registers it as the aggregated API ``metrics.k8s.io``: the APIService names a
Service whose endpoint is metrics-server's listener on the node's bridge address, which the API server (on the
host) reaches through the ClusterIP as kube-proxy routes it. Its serving certificate is issued by the cluster's CA,
which the APIService trusts; it trusts the kubelet's self-signed serving certificate, and reaches the kubelet (on
loopback) by the node's host name, which only its own mount namespace's /etc/hosts resolves.

``keda_http_add_on(control_plane, namespace, ...)`` installs KEDA's CRDs (from its pinned module) and the HTTP add-on's,
and runs KEDA's operator and the add-on's operator, interceptor and scaler (``KedaHttpAddOn``) in a network namespace
of their own, acting in `namespace` only. ``keda_with_adapter(control_plane, namespace, ...)`` runs KEDA's operator
and its metrics adapter there instead (``KedaWithAdapter``), the adapter registered as ``external.metrics.k8s.io``.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import yaml

from tests.cluster.controlplane import SERVICE_CIDR, ClusterError, _Process
from tests.cluster.helpers import crd_installed, wait_for
from tests.ports import free_port
from tests.realnode.node import GATEWAY, POOL, POOL_LABEL, RealNode, run

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
    absent = [tool for tool in ("unshare", "nsenter") if shutil.which(tool) is None]
    if absent:
        return f"{', '.join(absent)} (util-linux) missing"
    return None


def skip_unless_built(*names: str) -> None:
    """Skip the calling test, saying why, where these components cannot run."""
    import pytest

    reason = missing(*names)
    if reason:
        pytest.skip(reason)


def serving_certificate(cp, name: str, dns_name: str, directory: Path) -> tuple[Path, Path]:
    """A serving certificate for `dns_name` (and the bridge's address) issued by the cluster's CA."""
    from cryptography import x509

    return cp.issue_certificate(directory / f"{name}.crt", directory / f"{name}.key", dns_name, server=True,
                                sans=[x509.DNSName(dns_name), x509.IPAddress(ipaddress.ip_address(GATEWAY))])


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


def aggregated_api(cp, process: _Process, *, name: str, namespace: str, group: str, version: str, port: int,
                   address: str = GATEWAY) -> None:
    """The APIService for group/version, served by `process` listening on `address`:`port` (the bridge's address).

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
         "addressType": "IPv4", "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
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


class _HostComponent:
    """Started by `start(...)` (its constructor's arguments); what a failed start made is stopped again."""

    @classmethod
    def start(cls, *args):
        component = cls(*args)
        try:
            component._start()
        except BaseException:
            component.stop()
            raise
        return component

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class MetricsServer(_HostComponent):
    """metrics-server scraping the real node's kubelet, served to the cluster as metrics.k8s.io."""

    def __init__(self, cp, node: RealNode, workdir: Path):
        self.cp, self.node, self.workdir = cp, node, workdir
        self.process: _Process | None = None

    def _start(self) -> None:
        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        self.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(METRICS_SERVER_RBAC))
        kubeconfig = self.cp.client_kubeconfig("metrics-server", "system:metrics-server")
        cert, key = serving_certificate(self.cp, "metrics-server", "metrics-server.kube-system.svc", w / "pki")
        hosts = w / "hosts"
        hosts.write_text(f"127.0.0.1 localhost {self.node.name}\n")
        port = free_port()
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


# ---------------------------------------------------------------- KEDA and its HTTP add-on

TOOLS = Path(__file__).resolve().parent / "tools"
KEDA_NETNS = "slimserve-keda"
# A point-to-point link from the host into that namespace, outside the pods' network (so that kube-proxy
# masquerades its traffic to a Service, as it does the host's) and inside 198.18.0.0/15, which no other network uses.
KEDA_LINK, KEDA_HOST_ADDRESS, KEDA_ADDRESS = "slimkeda0", "198.18.1.1", "198.18.1.2"
INTERCEPTOR_ADMIN_SERVICE = "keda-http-interceptor-admin"
SCALER_SERVICE = "keda-http-scaler"
# How long the interceptor holds a request while the service scales from zero, and how long it then waits for the
# response's headers: at v0.8 their defaults (1.5 s and 0.5 s) are shorter than any pod's start or a first answer.
INTERCEPTOR_HOLD_SECONDS = 300
INTERCEPTOR_ENV = {"KEDA_CONDITION_WAIT_TIMEOUT": f"{INTERCEPTOR_HOLD_SECONDS}s", "KEDA_RESPONSE_HEADER_TIMEOUT": "60s"}


def pinned_version(project: str, module: str) -> str:
    """The version of `module` that tests/autoscaling/tools/<project>/go.mod requires (what build.sh builds)."""
    for line in (TOOLS / project / "go.mod").read_text().splitlines():
        words = line.split()
        if words[:2] == ["require", module]:
            return words[2]
    raise ClusterError(f"{module} is not required by {TOOLS / project / 'go.mod'}")


# What scale from zero runs beside the node, and the add-on's version (its CRD is vendored per version).
KEDA_HTTP_BINARIES = ("keda-operator", "keda-http-operator", "keda-http-interceptor", "keda-http-scaler")
HTTP_ADD_ON_VERSION = pinned_version("http-add-on", "github.com/kedacore/http-add-on")


def module_dir(project: str, module: str) -> Path:
    """The source of `module` at the version tests/autoscaling/tools/<project> pins (the one build.sh built), from
    the Go module cache (downloaded when absent, checked against go.sum)."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    out = subprocess.run([go, "mod", "download", "-json", module], cwd=TOOLS / project, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly"})
    if out.returncode != 0:
        raise ClusterError(f"go mod download {module}: {out.stdout}{out.stderr}")
    return Path(json.loads(out.stdout)["Dir"])


def keda_crds() -> list[Path]:
    """KEDA's CRDs (ScaledObject, ScaledJob, the trigger authentications, the event sources): its operator watches
    them all."""
    return sorted((module_dir("keda", "github.com/kedacore/keda/v2") / "config" / "crd" / "bases").glob("*.yaml"))


def netns_exec(argv: list[str]) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{KEDA_NETNS}", *argv]


def in_netns_kubeconfig(cp, name: str, user: str, group: str) -> Path:
    """A client kubeconfig whose server is the `kubernetes` Service's ClusterIP (the API server listens on the host's
    loopback; kube-proxy routes the ClusterIP to the real node's relay), which its certificate names."""
    path = cp.client_kubeconfig(name, user, group)
    config = yaml.safe_load(path.read_text())
    service_ip = next(ipaddress.ip_network(SERVICE_CIDR).hosts())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://{service_ip}:443"
    path.write_text(yaml.safe_dump(config))
    return path


def sweep_keda_netns() -> None:
    """Remove the namespace a KEDA whose owner died left (called with the real node's lock held)."""
    pids = run("ip", "netns", "pids", KEDA_NETNS, check=False)
    if pids.returncode != 0:
        return
    for pid in pids.stdout.decode().split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    run("ip", "netns", "del", KEDA_NETNS, check=False)
    run("ip", "link", "del", KEDA_LINK, check=False)


# Ports inside KEDA's network namespace: any free ones (nothing else listens there).
KEDA_GRPC_PORT, KEDA_METRICS_PORT, KEDA_HEALTH_PORT = 18083, 18084, 18085
ADAPTER_SECURE_PORT, ADAPTER_METRICS_PORT = 18087, 18088
# The name KEDA's gRPC metrics service answers to (its certificate's), which the metrics adapter dials.
KEDA_OPERATOR_HOST = "keda-operator"
EXTERNAL_METRICS_API = "v1beta1.external.metrics.k8s.io"
ADAPTER_SERVICE = "keda-metrics-apiserver"


class _KedaInNetns(_HostComponent):
    """KEDA's processes as host processes beside the real node, acting in one namespace of the cluster.

    Their listeners bind every address (the HTTP add-on's interceptor and scaler, KEDA's adapter's metrics cannot be
    told otherwise), so they run in a network namespace of their own: its loopback, and a link to the host at
    KEDA_ADDRESS, nothing else. From there the API server is the `kubernetes` Service's ClusterIP and a Service its
    ClusterIP; the host is KEDA_HOST_ADDRESS. They act with the cluster's admin rights: the upstream charts' RBAC is
    not what the tests check."""

    # What the processes' controllers put finalizers on: deleted while they still run.
    OWN_KINDS: tuple[str, ...] = ("scaledobjects.keda.sh",)

    def __init__(self, cp, namespace: str, workdir: Path):
        self.cp, self.namespace, self.workdir = cp, namespace, workdir
        self.processes: list[_Process] = []

    def _network(self) -> None:
        sweep_keda_netns()
        run("ip", "netns", "add", KEDA_NETNS)
        run("ip", "link", "add", KEDA_LINK, "type", "veth", "peer", "name", "eth0", "netns", KEDA_NETNS)
        run("ip", "addr", "add", f"{KEDA_HOST_ADDRESS}/30", "dev", KEDA_LINK)
        run("ip", "link", "set", KEDA_LINK, "up")
        for argv in (["ip", "addr", "add", f"{KEDA_ADDRESS}/30", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"],
                     ["ip", "link", "set", "lo", "up"], ["ip", "route", "add", "default", "via", KEDA_HOST_ADDRESS]):
            run(*netns_exec(argv))

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], hosts: Path | None = None) -> _Process:
        argv = with_hosts(hosts, argv) if hosts else argv
        process = _Process(name, netns_exec(argv), self.workdir / f"{name}.log", {**os.environ, **env})
        self.processes.append(process)
        return process

    def _kubeconfig(self) -> Path:
        return in_netns_kubeconfig(self.cp, "keda", "system:slimserve-test:keda", "system:masters")

    def _keda_operator(self, kubeconfig: Path, hosts: str) -> None:
        """KEDA's operator; its gRPC metrics service (what its metrics adapter asks) serves mutual TLS from
        --cert-dir as KEDA_OPERATOR_HOST."""
        w, ns = self.workdir, self.namespace
        certs = w / "keda-certs"
        serving_certificate(self.cp, "tls", KEDA_OPERATOR_HOST, certs)
        shutil.copy(self.cp.workdir / "pki" / "ca.crt", certs / "ca.crt")
        keda_hosts = w / "keda-hosts"
        keda_hosts.write_text(hosts)
        self._spawn("keda-operator", [
            str(binary("keda-operator")), f"--cert-dir={certs}",
            f"--metrics-bind-address=127.0.0.1:{KEDA_METRICS_PORT}",
            f"--health-probe-bind-address=127.0.0.1:{KEDA_HEALTH_PORT}",
            f"--metrics-service-bind-address=127.0.0.1:{KEDA_GRPC_PORT}", "--zap-log-level=info"],
            {"KUBECONFIG": str(kubeconfig), "WATCH_NAMESPACE": ns, "KEDA_CLUSTER_OBJECT_NAMESPACE": ns,
             "POD_NAMESPACE": ns},
            hosts=keda_hosts)

    def check_running(self) -> None:
        dead = [p for p in self.processes if p.popen.poll() is not None]
        if dead:
            raise ClusterError("\n".join(f"{p.name} exited {p.popen.returncode}:\n{p.tail()}" for p in dead))

    def logs(self, lines: int = 20) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail(lines)}" for p in self.processes)

    def _unregister(self) -> None:
        """What the cluster holds of the processes besides OWN_KINDS: gone before they stop."""

    def stop(self) -> None:
        # Their objects go while the controllers that put finalizers on them still run; what another writer made
        # meanwhile loses its finalizers, so that deleting the CRDs does not wait on controllers that are gone.
        if self.processes:
            for kind in self.OWN_KINDS:
                self.cp.kubectl("delete", kind, "--all", "-n", self.namespace, "--ignore-not-found", "--wait=true",
                                "--timeout=60s", check=False, timeout=90)
        self._unregister()
        for process in reversed(self.processes):
            process.stop()
            process.close()
        for kind in self.OWN_KINDS:
            names = self.cp.kubectl("get", kind, "-n", self.namespace, "-o", "name", check=False).stdout.split()
            for name in names:
                self.cp.kubectl("patch", "-n", self.namespace, name, "--type=merge", "-p",
                                '{"metadata": {"finalizers": null}}', check=False)
        sweep_keda_netns()

    def leftovers(self) -> list[str]:
        left = [f"process {p.name} ({p.popen.pid})" for p in self.processes if p.popen.poll() is None]
        if run("ip", "netns", "pids", KEDA_NETNS, check=False).returncode == 0:
            left.append(f"network namespace {KEDA_NETNS}")
        if run("ip", "link", "show", KEDA_LINK, check=False).returncode == 0:
            left.append(f"link {KEDA_LINK}")
        return left


class KedaHttpAddOn(_KedaInNetns):
    """KEDA's operator and the KEDA HTTP add-on (operator, interceptor, scaler).

    The interceptor dials `SERVICE.NAMESPACE`, which only its /etc/hosts resolves (`route()` adds each), and the
    add-on's scaler `SCALER_SERVICE.NAMESPACE` is its loopback (KEDA's /etc/hosts). The scaler finds the
    interceptor, as in a cluster, by the Endpoints of its admin Service, here KEDA_ADDRESS."""

    OWN_KINDS = ("httpscaledobjects.http.keda.sh", "scaledobjects.keda.sh")

    def __init__(self, cp, namespace: str, workdir: Path):
        super().__init__(cp, namespace, workdir)
        self.proxy_port, self.admin_port, self.scaler_port, *_ = range(18080, KEDA_GRPC_PORT)
        self.interceptor_hosts = workdir / "interceptor-hosts"

    @property
    def proxy_address(self) -> str:
        return f"{KEDA_ADDRESS}:{self.proxy_port}"

    def _start(self) -> None:
        w, ns = self.workdir, self.namespace
        w.mkdir(parents=True, exist_ok=True)
        self._network()
        kubeconfig = self._kubeconfig()
        self.cp.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all([
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": INTERCEPTOR_ADMIN_SERVICE},
             "spec": {"ports": [{"name": "admin", "port": self.admin_port, "protocol": "TCP"}]}},
            # The scaler reads the interceptors' addresses from the Endpoints (not EndpointSlices) at v0.8.
            {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": INTERCEPTOR_ADMIN_SERVICE},
             "subsets": [{"addresses": [{"ip": KEDA_ADDRESS}],
                          "ports": [{"name": "admin", "port": self.admin_port, "protocol": "TCP"}]}]},
        ]))
        base = {"KUBECONFIG": str(kubeconfig)}
        self.interceptor_hosts.write_text("127.0.0.1 localhost\n")
        self._spawn("keda-http-interceptor", [str(binary("keda-http-interceptor"))], {
            **base, **INTERCEPTOR_ENV, "KEDA_HTTP_CURRENT_NAMESPACE": ns, "KEDA_HTTP_WATCH_NAMESPACE": ns,
            "KEDA_HTTP_PROXY_PORT": str(self.proxy_port), "KEDA_HTTP_ADMIN_PORT": str(self.admin_port),
            "KEDA_HTTP_OTEL_PROM_EXPORTER_ENABLED": "false"}, hosts=self.interceptor_hosts)
        self._spawn("keda-http-scaler", [str(binary("keda-http-scaler"))], {
            **base, "KEDA_HTTP_SCALER_PORT": str(self.scaler_port), "KEDA_HTTP_SCALER_TARGET_ADMIN_NAMESPACE": ns,
            "KEDA_HTTP_SCALER_TARGET_ADMIN_SERVICE": INTERCEPTOR_ADMIN_SERVICE,
            "KEDA_HTTP_SCALER_TARGET_ADMIN_DEPLOYMENT": "keda-http-interceptor",
            "KEDA_HTTP_SCALER_TARGET_ADMIN_PORT": str(self.admin_port)})
        # The add-on's operator makes each HTTPScaledObject's ScaledObject, whose trigger names the scaler as
        # SCALER_SERVICE.NAMESPACE:PORT.
        self._spawn("keda-http-operator", [str(binary("keda-http-operator")), "--metrics-bind-address=0",
                                           f"--health-probe-bind-address=127.0.0.1:{KEDA_HEALTH_PORT + 1}"], {
            **base, "KEDAHTTP_OPERATOR_EXTERNAL_SCALER_SERVICE": SCALER_SERVICE,
            "KEDAHTTP_OPERATOR_EXTERNAL_SCALER_PORT": str(self.scaler_port),
            "KEDA_HTTP_OPERATOR_NAMESPACE": ns, "KEDA_HTTP_OPERATOR_WATCH_NAMESPACE": ns})
        self._keda_operator(kubeconfig, f"127.0.0.1 localhost {SCALER_SERVICE}.{ns}\n")
        self.check_running()

    def route(self, service: str, cluster_ip: str) -> None:
        """Let the interceptor resolve `service`.NAMESPACE, as a cluster's DNS would (it re-reads /etc/hosts)."""
        with open(self.interceptor_hosts, "a") as hosts:  # the same file: the bind mount shows the new line
            hosts.write(f"{cluster_ip} {service}.{self.namespace}\n")


@contextlib.contextmanager
def _keda_running(cp, component: type[_KedaInNetns], namespace: str, workdir: Path,
                  extra_crds: tuple[Path, ...] = ()) -> Iterator:
    """KEDA's CRDs (and `extra_crds`) installed, and `component`'s processes running, for the block; then none."""
    with contextlib.ExitStack() as installed:
        for crd in [*keda_crds(), *extra_crds]:
            installed.enter_context(crd_installed(cp, crd))
        components = component.start(cp, namespace, workdir)
        try:
            yield components
        finally:
            components.stop()
    left = components.leftovers()
    if left:
        raise ClusterError("KEDA left behind:\n" + "\n".join(left))


def keda_http_add_on(cp, namespace: str, workdir: Path, http_add_on_crd: Path):
    """KEDA's and the add-on's CRDs installed, and their processes running, for the block; then none of either."""
    return _keda_running(cp, KedaHttpAddOn, namespace, workdir, (http_add_on_crd,))


# ---------------------------------------------------------------- KEDA with its metrics adapter

KEDA_ADAPTER_BINARIES = ("keda-operator", "keda-adapter")


def client_certificate(cp, common_name: str, directory: Path) -> None:
    """directory/tls.crt, tls.key: a client certificate for `common_name` issued by the cluster's CA, and its ca.crt."""
    cp.issue_certificate(directory / "tls.crt", directory / "tls.key", common_name)
    shutil.copy(cp.workdir / "pki" / "ca.crt", directory / "ca.crt")


class KedaWithAdapter(_KedaInNetns):
    """KEDA's operator and its metrics adapter (keda-operator-metrics-apiserver), registered as the aggregated API
    external.metrics.k8s.io: the HPA a ScaledObject makes reads its triggers' values there. The adapter asks the
    operator's gRPC metrics service (mutual TLS, its client certificate of the cluster's CA), which asks the
    trigger's source; from the namespace the host (a Prometheus listening there) is KEDA_HOST_ADDRESS."""

    def _start(self) -> None:
        w, ns = self.workdir, self.namespace
        w.mkdir(parents=True, exist_ok=True)
        self._network()
        kubeconfig = self._kubeconfig()
        self._keda_operator(kubeconfig, "127.0.0.1 localhost\n")
        client_certificate(self.cp, "keda-metrics-apiserver", w / "adapter-grpc")
        cert, key = serving_certificate(self.cp, ADAPTER_SERVICE, f"{ADAPTER_SERVICE}.{ns}.svc", w / "adapter-pki")
        adapter = self._spawn("keda-adapter", [
            str(binary("keda-adapter")), f"--secure-port={ADAPTER_SECURE_PORT}", f"--bind-address={KEDA_ADDRESS}",
            f"--tls-cert-file={cert}", f"--tls-private-key-file={key}", f"--cert-dir={w / 'adapter-grpc'}",
            f"--lister-kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", f"--port={ADAPTER_METRICS_PORT}",
            f"--metrics-service-address=127.0.0.1:{KEDA_GRPC_PORT}",
            f"--metrics-service-grpc-authority={KEDA_OPERATOR_HOST}", "--zap-log-level=info"],
            {"KUBECONFIG": str(kubeconfig), "WATCH_NAMESPACE": ns, "POD_NAMESPACE": ns})
        self.check_running()
        aggregated_api(self.cp, adapter, name=ADAPTER_SERVICE, namespace=ns, group="external.metrics.k8s.io",
                       version="v1beta1", port=ADAPTER_SECURE_PORT, address=KEDA_ADDRESS)

    def _unregister(self) -> None:
        # An APIService whose server is gone fails every client's discovery of the cluster's APIs.
        self.cp.kubectl("delete", "apiservice", EXTERNAL_METRICS_API, "--ignore-not-found", check=False)
        self.cp.kubectl("delete", "-n", self.namespace, f"service/{ADAPTER_SERVICE}",
                        f"endpointslice/{ADAPTER_SERVICE}-host", "--ignore-not-found", check=False)

    def leftovers(self) -> list[str]:
        left = super().leftovers()
        if self.cp.kubectl("get", "apiservice", EXTERNAL_METRICS_API, check=False).returncode == 0:
            left.append(f"APIService {EXTERNAL_METRICS_API}")
        return left


def keda_with_adapter(cp, namespace: str, workdir: Path):
    """KEDA's CRDs installed, and its operator and metrics adapter running, for the block; then none of either."""
    return _keda_running(cp, KedaWithAdapter, namespace, workdir)
