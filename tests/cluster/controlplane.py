"""A real Kubernetes control plane, run as local processes, for the test suite.

``ControlPlane.start()`` runs etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes and pods) on 127.0.0.1 with free ports,
in a temporary directory, and waits until the API is ready, the fake nodes are
Ready and the default ServiceAccount exists.  ``stop()`` ends every process
(each runs in its own process group) and removes the directory; it also runs
at interpreter exit and on SIGTERM/SIGHUP, and the children get SIGKILL from
the kernel if this process dies without cleaning up.

The binaries come from ``tests/cluster/build.sh`` (a versioned cache outside
the repository).  See ``kwok/kwok.yaml`` for how a test steers the fate of a
pod (annotation ``slimserve.io/test-outcome``).
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import yaml

from tests.ports import free_port

if TYPE_CHECKING:
    import kubernetes.client

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"
KWOK_CONFIG = HERE / "kwok" / "kwok.yaml"
NODES_MANIFEST = HERE / "kwok" / "nodes.yaml"

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "helm")
NODE_COUNT = 5  # kwok/nodes.yaml: 3 in pool cpu, 2 in pool gpu
SERVICE_CIDR = "198.19.0.0/16"  # within 198.18.0.0/15, which no other network uses (tests/realnode routes it)
CLUSTER_CIDR = "10.244.0.0/16"
WORKDIR_PREFIX = "slimserve-cluster-"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"

# Pod annotations read by the kwok stages (kwok/kwok.yaml).
OUTCOME_ANNOTATION = "slimserve.io/test-outcome"  # "run" | "fail" | "succeed"
DELAY_ANNOTATION = "slimserve.io/test-delay"  # Go duration, e.g. "3s"
EXIT_CODE_ANNOTATION = "slimserve.io/test-exit-code"  # with "fail", default 1


class ClusterError(RuntimeError):
    pass


class _PortTaken(ClusterError):
    pass


class CommandError(subprocess.CalledProcessError):
    """A failed kubectl/helm call; unlike its base class it shows the output."""

    def __str__(self) -> str:
        cmd = " ".join(map(str, self.cmd))
        return f"{cmd!r} exited {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def cached_bin_dir() -> Path:
    """The cache directory that holds (or will hold) the binaries of the pinned versions."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "--print-bin-dir"], check=True, text=True, capture_output=True)
    return Path(out.stdout.strip())


def ensure_built() -> Path:
    """Build the binaries when any is missing (a slow, one-time step); return their directory."""
    path = cached_bin_dir()
    if any(not (path / b).is_file() for b in BINARIES):
        print(f"building the test cluster binaries into {path} (once; takes a while)", file=sys.stderr, flush=True)
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True)
    return path


# ---------------------------------------------------------------- certificates


def _signed(ca_cert, ca_key, subject, *, server: bool = False, sans: list | None = None):
    """A new key and its certificate for `subject` (a client's, or a server's with `sans`), signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    k = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
                content_commitment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), k


def _pki(directory: Path) -> dict[str, Path]:
    """A CA, the serving certificate, client certificates and the service-account key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    files: dict[str, Path] = {}

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(name: str, k: ec.EllipticCurvePrivateKey) -> Path:
        path = directory / f"{name}.key"
        path.write_bytes(
            k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        path.chmod(0o600)
        return path

    def write_cert(name: str, cert: x509.Certificate) -> Path:
        path = directory / f"{name}.crt"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def name_of(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = key()
    ca_name = name_of("slimserve-test-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files["ca.crt"] = write_cert("ca", ca_cert)
    files["ca.key"] = write_key("ca", ca_key)

    def issue(name: str, cn: str, org: str | None = None, server: bool = False, sans: list | None = None) -> None:
        cert, k = _signed(ca_cert, ca_key, name_of(cn, org), server=server, sans=sans)
        files[f"{name}.crt"] = write_cert(name, cert)
        files[f"{name}.key"] = write_key(name, k)

    service_ip = next(ipaddress.ip_network(SERVICE_CIDR).hosts())
    issue(
        "apiserver", "kube-apiserver", server=True,
        sans=[
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(service_ip),
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("kubernetes.default.svc.cluster.local"),
        ],
    )
    issue("admin", "kubernetes-admin", "system:masters")
    issue("controller-manager", "system:kube-controller-manager")
    issue("scheduler", "system:kube-scheduler")
    issue("kwok", "kwok-controller", "system:masters")
    # The aggregator's client certificate towards extension API servers (metrics-server, KEDA's metrics adapter).
    issue("front-proxy-client", "front-proxy-client")

    sa_key = key()
    files["sa.key"] = write_key("sa", sa_key)
    files["sa.pub"] = directory / "sa.pub"
    files["sa.pub"].write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return files


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca: Path, user: str, *, cert: Path | None = None,
                     key: Path | None = None, token: str | None = None, namespace: str | None = None) -> Path:
    credentials: dict[str, str] = {}
    if cert and key:
        credentials = {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}
    if token:
        credentials["token"] = token
    context = {"cluster": "slimserve-test", "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "slimserve-test", "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": context}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


# ---------------------------------------------------------------- processes


try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL this process when the parent dies (Linux).

    The kernel sends it when the thread that started the child ends, so this is only
    used for children started from the main thread.
    """
    if _prctl is not None:
        _prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG


_live: set["ControlPlane"] = set()
_live_lock = threading.Lock()
_handlers_installed = False


def _stop_all() -> None:
    with _live_lock:
        planes = list(_live)
    for plane in planes:
        plane.stop()


def _install_exit_handlers() -> None:
    """Stop every live control plane at interpreter exit and on SIGTERM/SIGHUP."""
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(signum)
        if previous is signal.SIG_IGN:
            continue

        def handler(num, frame, previous=previous):
            _stop_all()
            if callable(previous):
                previous(num, frame)
            else:
                raise SystemExit(128 + num)

        signal.signal(signum, handler)


def _sweep_stale_workdirs() -> None:
    """Remove work directories left by a run that was killed before it could clean up."""
    for path in Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"):
        try:
            pid = int((path / "owner.pid").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            continue


class _Process:
    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log = log
        self._log_file = open(log, "wb")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group, killed as a whole
            preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
        )

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.popen.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace: float = 10) -> None:
        """SIGTERM to the group, SIGKILL after `grace` seconds."""
        if self.popen.poll() is not None:
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait(5)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def close(self) -> None:
        self._log_file.close()


# ---------------------------------------------------------------- the control plane


class ControlPlane:
    """A running local control plane.  Create it with ``ControlPlane.start()``."""

    kubeconfig: Path
    server: str
    bin_dir: Path
    workdir: Path

    def __init__(self, bin_dir: Path, workdir: Path):
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.kubeconfig = workdir / "admin.kubeconfig"
        self.server = ""
        self.processes: list[_Process] = []
        self._stopped = False
        self._owner_pid = os.getpid()
        self._ssl: ssl.SSLContext | None = None
        self.started_in: float | None = None  # seconds from start() to a usable cluster
        self.timings: dict[str, float] = {}  # milestones of the start, in seconds

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def start(cls, *, bin_dir: Path | None = None, build: bool = True, timeout: float = 90) -> "ControlPlane":
        """Start a fresh cluster (building the binaries first when ``build`` and any is missing)."""
        if bin_dir is None:
            bin_dir = ensure_built() if build else cached_bin_dir()
        missing = [b for b in BINARIES if not (bin_dir / b).is_file()]
        if missing:
            raise ClusterError(f"missing binaries in {bin_dir}: {missing}; run tests/cluster/build.sh")
        _sweep_stale_workdirs()
        _install_exit_handlers()
        for attempt in range(3):
            workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
            (workdir / "owner.pid").write_text(str(os.getpid()))
            plane = cls(bin_dir, workdir)
            with _live_lock:
                _live.add(plane)
            try:
                plane._start(timeout)
                return plane
            except _PortTaken:
                plane.stop()  # another process took a port between choosing and binding it
                if attempt == 2:
                    raise
            except BaseException:
                plane.stop()
                raise
        raise AssertionError("unreachable")

    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> _Process:
        proc = _Process(name, [str(self.bin_dir / name), *args], self.workdir / "logs" / f"{name}.log", env)
        self.processes.append(proc)
        return proc

    def _start(self, timeout: float) -> None:
        t0 = time.monotonic()
        deadline = t0 + timeout
        w = self.workdir
        (w / "logs").mkdir()
        pki = _pki(w / "pki")

        etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        etcd_url = f"http://127.0.0.1:{etcd_port}"

        write_kubeconfig(self.kubeconfig, self.server, pki["ca.crt"], "admin", cert=pki["admin.crt"], key=pki["admin.key"])
        kubeconfigs = {
            name: write_kubeconfig(w / f"{name}.kubeconfig", self.server, pki["ca.crt"], name,
                                   cert=pki[f"{name}.crt"], key=pki[f"{name}.key"])
            for name in ("controller-manager", "scheduler", "kwok")
        }

        self._spawn(
            "etcd",
            "--name=slimserve-test",
            f"--data-dir={w / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=slimserve-test=http://127.0.0.1:{etcd_peer}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync",
            "--log-level=warn",
        )
        self._spawn(
            "kube-apiserver",
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki['apiserver.crt']}",
            f"--tls-private-key-file={pki['apiserver.key']}",
            f"--client-ca-file={pki['ca.crt']}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki['sa.pub']}",
            f"--service-account-signing-key-file={pki['sa.key']}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            # The "kubernetes" Service cannot point at a loopback address; nothing here needs its endpoints.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            # Aggregated APIs (metrics.k8s.io, external.metrics.k8s.io): the aggregator proxies as front-proxy-client
            # and passes the user in request headers the extension server trusts from that name only.
            f"--proxy-client-cert-file={pki['front-proxy-client.crt']}",
            f"--proxy-client-key-file={pki['front-proxy-client.key']}",
            f"--requestheader-client-ca-file={pki['ca.crt']}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--v=1",
        )
        self._spawn(
            "kube-controller-manager",
            f"--kubeconfig={kubeconfigs['controller-manager']}",
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki['sa.key']}",
            f"--root-ca-file={pki['ca.crt']}",
            f"--cluster-signing-cert-file={pki['ca.crt']}",
            f"--cluster-signing-key-file={pki['ca.key']}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cluster-cidr={CLUSTER_CIDR}",
            "--cluster-name=slimserve-test",
            # Each controller fetches its own token at start; the default 20 QPS makes that take seconds.
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            # HPAs act within seconds rather than minutes, so autoscaling tests see load and idleness quickly.
            "--horizontal-pod-autoscaler-sync-period=5s",
            "--horizontal-pod-autoscaler-downscale-stabilization=20s",
            "--leader-elect=false",
            "--secure-port=0",
            "--v=1",
        )
        self._spawn(
            "kube-scheduler",
            f"--kubeconfig={kubeconfigs['scheduler']}",
            "--leader-elect=false",
            "--secure-port=0",
            "--v=1",
        )
        kwok_env = dict(os.environ, KWOK_WORKDIR=str(w / "kwok"))
        self._spawn(
            "kwok",
            f"--kubeconfig={kubeconfigs['kwok']}",
            f"--config={KWOK_CONFIG}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            env=kwok_env,
        )

        self.timings["spawned"] = time.monotonic() - t0
        self._wait("the API to be ready", lambda: self._get("/readyz") == 200, deadline)
        self.timings["api ready"] = time.monotonic() - t0
        self.kubectl("apply", "-f", str(NODES_MANIFEST))
        self._wait("the fake nodes to be Ready", self._nodes_ready, deadline)
        self.timings["nodes ready"] = time.monotonic() - t0
        self._wait("the default ServiceAccount", lambda: self._has_default_sa("default"), deadline)
        self.started_in = self.timings["default serviceaccount"] = time.monotonic() - t0

    def _wait(self, what: str, check: Callable[[], bool], deadline: float) -> None:
        while True:
            dead = [p for p in self.processes if p.popen.poll() is not None]
            if dead:
                p = dead[0]
                if "address already in use" in p.tail(50):
                    raise _PortTaken(f"{p.name}: a chosen port was taken:\n{p.tail()}")
                raise ClusterError(f"{p.name} exited with {p.popen.returncode} while waiting for {what}:\n{p.tail()}")
            try:
                if check():
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{p.tail(10)}" for p in self.processes)
                raise ClusterError(f"timed out waiting for {what}\n{logs}")
            time.sleep(0.1)

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.workdir / "pki" / "ca.crt"))
        ctx.load_cert_chain(self.workdir / "pki" / "admin.crt", self.workdir / "pki" / "admin.key")
        return ctx

    def _get(self, path: str) -> int:
        return self._request(path)[0]

    def _request(self, path: str) -> tuple[int, dict]:
        """GET ``path`` as admin: (status, decoded JSON body or {})."""
        if self._ssl is None:
            self._ssl = self._ssl_context()
        try:
            with urllib.request.urlopen(self.server + path, context=self._ssl, timeout=5) as resp:
                body = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            return e.code, {}
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {}

    def _nodes_ready(self) -> bool:
        status, nodes = self._request("/api/v1/nodes?labelSelector=type%3Dkwok")
        ready = [
            n for n in nodes.get("items", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        ]
        return status == 200 and len(ready) == len(nodes["items"]) == NODE_COUNT

    def _has_default_sa(self, namespace: str) -> bool:
        return self._request(f"/api/v1/namespaces/{namespace}/serviceaccounts/default")[0] == 200

    def stop(self) -> None:
        """End every process (TERM, then KILL after a few seconds) and remove the work directory."""
        if self._stopped or os.getpid() != self._owner_pid:
            return
        self._stopped = True
        with _live_lock:
            _live.discard(self)
        # Clients first, etcd last, so the apiserver does not spin on a vanished store.
        ordered = [p for p in self.processes if p.name != "etcd"] + [p for p in self.processes if p.name == "etcd"]
        for group in (ordered[:-1], ordered[-1:]):
            for p in group:
                p.signal_group(signal.SIGTERM)
            end = time.monotonic() + 5
            for p in group:
                try:
                    p.popen.wait(max(0.1, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
                p.signal_group(signal.SIGKILL)  # also any straggler of its group
                try:
                    p.popen.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        for p in self.processes:
            p.close()
        if os.environ.get("SLIMSERVE_KEEP_CLUSTER_DIR"):
            (self.workdir / "owner.pid").unlink(missing_ok=True)  # not swept as stale
            print(f"kept the cluster directory {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "ControlPlane":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ the API the tests use

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG (admin), PATH with the cluster binaries first, and private helm dirs."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        helm = self.workdir / "helm"
        env.setdefault("HELM_CACHE_HOME", str(helm / "cache"))
        env.setdefault("HELM_CONFIG_HOME", str(helm / "config"))
        env.setdefault("HELM_DATA_HOME", str(helm / "data"))
        env.setdefault("KUBECACHEDIR", str(self.workdir / "kube-cache"))
        return env

    def _run(self, argv: list[str], check: bool, input: str | None, timeout: float) -> subprocess.CompletedProcess:
        out = subprocess.run(argv, input=input, text=True, capture_output=True, timeout=timeout, env=self.env())
        if check and out.returncode != 0:
            raise CommandError(out.returncode, argv, out.stdout, out.stderr)
        return out

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                kubeconfig: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run our kubectl (admin unless ``kubeconfig`` is given); text output captured."""
        argv = [str(self.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        return self._run(argv, check, input, timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run our helm against the cluster as admin."""
        argv = [str(self.bin_dir / "helm"), f"--kubeconfig={self.kubeconfig}", *args]
        return self._run(argv, check, None, timeout)

    def issue_certificate(self, cert_path: Path, key_path: Path, common_name: str, *, group: str | None = None,
                          server: bool = False, sans: list | None = None) -> tuple[Path, Path]:
        """A new key and its certificate for `common_name` (in `group`) signed by the cluster's CA, written to
        `cert_path` and `key_path` (PEM, the key readable by its owner only): a client's, or a server's with `sans`."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.x509.oid import NameOID

        pki = self.workdir / "pki"
        ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if group:
            subject.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, group))
        cert, key = _signed(ca_cert, ca_key, x509.Name(subject), server=server, sans=sans)
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return cert_path, key_path

    def client_kubeconfig(self, name: str, user: str, group: str | None = None) -> Path:
        """A kubeconfig that authenticates as `user` (in `group`) with a client certificate of the cluster's CA,
        as a kubelet or kube-proxy of a real cluster does."""
        pki = self.workdir / "pki"
        cert_path, key_path = self.issue_certificate(pki / f"{name}.crt", pki / f"{name}.key", user, group=group)
        return write_kubeconfig(self.workdir / f"{name}.kubeconfig", self.server, pki / "ca.crt", name,
                                cert=cert_path, key=key_path)

    def api_client(self) -> "kubernetes.client.ApiClient":
        """A new admin ApiClient of the kubernetes package."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def create_namespace(self, prefix: str) -> str:
        """Create a namespace named ``<prefix>-<random>`` and wait for its default ServiceAccount."""
        base = "".join(c if c.isalnum() or c == "-" else "-" for c in prefix.lower()).strip("-")[:50] or "test"
        name = f"{base}-{secrets.token_hex(3)}"
        self.kubectl("create", "namespace", name)
        self._wait(f"the default ServiceAccount in {name}", lambda: self._has_default_sa(name), time.monotonic() + 30)
        return name

    def delete_namespace(self, name: str, wait: bool = False) -> None:
        self.kubectl("delete", "namespace", name, f"--wait={'true' if wait else 'false'}", "--ignore-not-found", check=False)

    def service_account_kubeconfig(self, namespace: str, name: str, *, expiration_seconds: int = 3600) -> Path:
        """A kubeconfig that authenticates as ServiceAccount namespace/name with a TokenRequest token.

        The ServiceAccount is created when it does not exist yet.
        """
        from kubernetes import client

        with self.api_client() as api:
            core = client.CoreV1Api(api)
            try:
                core.read_namespaced_service_account(name, namespace)
            except client.ApiException as e:
                if e.status != 404:
                    raise
                core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name)))
            request = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
            )
            token = core.create_namespaced_service_account_token(name, namespace, request).status.token
        path = self.workdir / f"sa-{namespace}-{name}.kubeconfig"
        return write_kubeconfig(path, self.server, self.workdir / "pki" / "ca.crt",
                                f"system:serviceaccount:{namespace}:{name}", token=token, namespace=namespace)
