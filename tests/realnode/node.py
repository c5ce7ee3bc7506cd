"""A real node for the local control plane: containerd, a kubelet and kube-proxy as local processes.

``RealNode.join(control_plane)`` starts containerd (its own configuration, socket and state; its content store
and snapshots in a cache outside the repository, so imported images stay), pre-creates the pods' bridge, and
starts the kubelet (node ``real-0``, label ``slimserve.io/pool=real``, taint ``slimserve.io/pool=real:NoSchedule``
so that only pods tolerating it land there) and kube-proxy (iptables, so Services route). Pods get addresses in
POD_CIDR; the control plane's Services are in its SERVICE_CIDR; both lie in 198.18.0.0/15, which no other network
uses. Pods reach the API server (which listens on loopback) through the ``kubernetes`` Service, whose endpoint is
a relay on the bridge's address.

The kubelet authenticates as ``system:node:real-0`` (group ``system:nodes``, so the Node authorizer and the
NodeRestriction admission plugin confine it to its node and what its pods reference), kube-proxy as
``system:kube-proxy`` (the default ``system:node-proxier`` binding): client certificates of the control plane's CA.

``leave()`` drains the node, stops the processes, removes what they made (pod sandboxes and their network
namespaces, mounts, the bridge, kube-proxy's and the CNI plugin's iptables rules, cgroups) and ``leftovers()``
lists anything still there. A node whose process died first (SIGKILL) leaves all that behind, recorded in a state
file next to the lock: the next ``join()`` sweeps it, once that owner is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import yaml

from tests.cluster.controlplane import SERVICE_CIDR, ClusterError, _Process
from tests.ports import free_port

from .podman_store import PodmanStore

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUILD_SCRIPT = REPO / "tests" / "cluster" / "build.sh"
NODE_BINARIES = ("kubelet", "kube-proxy")
RUNTIME_BINARIES = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "conntrack")
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback")

NODE_NAME = "real-0"
POOL = "real"
POOL_LABEL = "slimserve.io/pool"
TAINT = {"key": POOL_LABEL, "value": POOL, "effect": "NoSchedule"}
TOLERATION = {"key": POOL_LABEL, "operator": "Equal", "value": POOL, "effect": "NoSchedule"}
POD_CIDR = "198.18.0.0/24"
GATEWAY = "198.18.0.1"
BRIDGE = "slimrealnode0"
CNI_NETWORK = "slimserve-realnode"
CGROUP_ROOT = "slimserve-realnode"
SANDBOX_IMAGE = "localhost/slimserve/pause:catatonit"
CONTAINERD_NAMESPACE = "k8s.io"
IMAGE_PREFIX = "ghcr.io/slimserve/"  # the images `make images` builds
WORKDIR_PREFIX = "slimserve-realnode-"
# Whatever names these in iptables, routes or mounts was made for the node.
MARKERS = ("KUBE-", CNI_NETWORK, BRIDGE, *(cidr.rsplit(".", 2)[0] + "." for cidr in (POD_CIDR, SERVICE_CIDR)))


def pause_pod(name: str, **spec) -> dict:
    """A pod bound to the node that runs the sandbox image's pause, which every join imports: nothing to pull."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": NODE_NAME, "tolerations": [TOLERATION], "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "pause", "image": SANDBOX_IMAGE, "imagePullPolicy": "Never"}], **spec}}


def node_bin_dir() -> Path:
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "--print-node-bin-dir"], check=True, text=True,
                         capture_output=True)
    return Path(out.stdout.strip())


def cache_dir() -> Path:
    return Path(os.environ.get("SLIMSERVE_CACHE", Path.home() / ".cache" / "slimserve")) / "realnode"


def cannot_run() -> str | None:
    """Why a real node cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return "a real node needs root (containerd, network namespaces, iptables)"
    if not Path("/sys/fs/cgroup/memory").is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").is_file():
        return "no cgroup hierarchy to run pods in"
    try:
        probe = Path(tempfile.mkdtemp(dir="/sys/fs/cgroup/memory" if Path("/sys/fs/cgroup/memory").is_dir()
                                      else "/sys/fs/cgroup"))
        probe.rmdir()
    except OSError as error:
        return f"cannot create cgroups: {error}"
    missing = [b for b in RUNTIME_BINARIES if shutil.which(b) is None]
    missing += [f"CNI plugin {p}" for p in CNI_PLUGINS if not (CNI_BIN_DIR / p).is_file()]
    if missing:
        return f"missing {', '.join(missing)} (tests/realnode/install.sh installs them)"
    if any(not (node_bin_dir() / b).is_file() for b in NODE_BINARIES):
        return "kubelet and kube-proxy are not built (tests/cluster/build.sh)"
    return None


def run(*argv: str, check: bool = True, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, input=input, capture_output=True, timeout=timeout)
    if check and out.returncode != 0:
        raise ClusterError(f"{' '.join(argv)}: exit {out.returncode}\n{out.stdout.decode(errors='replace')}\n"
                           f"{out.stderr.decode(errors='replace')}")
    return out


class NodeBusy(ClusterError):
    """Another process runs the real node of this machine (one bridge, one containerd store)."""


class Relay:
    """A TCP relay from the bridge's address to the API server on loopback, so that pods reach it."""

    def __init__(self, listen_host: str, target: tuple[str, int]):
        self.target = target
        self.server = socket.create_server((listen_host, 0))
        self.port = self.server.getsockname()[1]
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="realnode-relay").start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stopped.set()
        self.server.close()


class RealNode:
    name = NODE_NAME

    def __init__(self, control_plane, workdir: Path):
        self.cp = control_plane
        self.workdir = workdir
        self.bin_dir = node_bin_dir()
        self.processes: list[_Process] = []
        self.relay: Relay | None = None
        self.socket = workdir / "containerd.sock"
        self._lock = None

    # ------------------------------------------------------------ start

    @classmethod
    def join(cls, control_plane, timeout: float = 120) -> "RealNode":
        cache_dir().mkdir(parents=True, exist_ok=True)
        lock = open(cache_dir() / "node.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise NodeBusy("another process runs the real node on this machine") from None
        try:
            sweep_stale(control_plane)
        except BaseException:
            lock.close()
            raise
        node = cls(control_plane, Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX)))
        node._lock = lock
        try:
            node._record()
            node._start(timeout)
        except BaseException:
            node.leave()
            raise
        return node

    def _spawn(self, name: str, argv: list[str]) -> _Process:
        (self.workdir / "logs").mkdir(exist_ok=True)
        proc = _Process(name, argv, self.workdir / "logs" / f"{name}.log")
        self.processes.append(proc)
        self._record()
        return proc

    def _record(self) -> None:
        """What this node makes, for the next join to sweep should this process die before `leave()`: its owner,
        processes and work directory (the containers' mounts and network namespaces are under it); the bridge,
        cgroup root and iptables chains have fixed names."""
        state = {"owner": _identity(os.getpid()), "workdir": str(self.workdir), "socket": str(self.socket),
                 "processes": [{"name": p.name, **_identity(p.popen.pid)} for p in self.processes],
                 "bridge": BRIDGE, "cgroupRoot": CGROUP_ROOT}
        partial = state_file().with_suffix(".partial")
        partial.write_text(json.dumps(state))
        partial.replace(state_file())

    def _start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._bridge()
        self._containerd()
        self._wait("containerd", lambda: self.ctr("version", check=False).returncode == 0, deadline)
        self.import_sandbox_image()
        host, port = self.cp.server.removeprefix("https://").rsplit(":", 1)
        self.relay = Relay(GATEWAY, (host, int(port)))
        self._api_endpoint(self.relay.port)
        self._cgroups()
        # Identities of their own, as in a real cluster: the Node authorizer and NodeRestriction limit the kubelet
        # to its node and what its pods reference; system:kube-proxy is bound to system:node-proxier.
        self.kubelet_kubeconfig = self.cp.client_kubeconfig(f"kubelet-{self.name}", f"system:node:{self.name}",
                                                            "system:nodes")
        self.proxy_kubeconfig = self.cp.client_kubeconfig("kube-proxy", "system:kube-proxy")
        self._kubelet()
        self._kube_proxy()
        self._wait(f"node {self.name} to be Ready", self._ready, deadline)

    def _bridge(self) -> None:
        """The pods' bridge with the gateway address, made before the first pod so the relay can listen on it."""
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{GATEWAY}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        cni = self.workdir / "cni"
        cni.mkdir()
        (cni / "10-slimserve.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0",
            "name": CNI_NETWORK,
            "plugins": [{
                "type": "bridge", "bridge": BRIDGE, "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
                "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                         "dataDir": str(self.workdir / "ipam")},
            }],
        }))

    def _containerd(self) -> None:
        root = cache_dir() / "containerd"
        root.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "containerd.toml"
        config.write_text(f"""version = 2
root = "{root}"
state = "{self.workdir / 'containerd-state'}"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{self.workdir / 'cni'}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{self.workdir / 'runc'}"
""")
        self._spawn("containerd", [shutil.which("containerd"), "--config", str(config)])

    def ctr(self, *args: str, check: bool = True, input: bytes | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        return run("ctr", "--address", str(self.socket), "--namespace", CONTAINERD_NAMESPACE, *args,
                   check=check, input=input, timeout=timeout)

    def images(self) -> set[str]:
        return set(self.ctr("images", "list", "--quiet").stdout.decode().split())

    def import_sandbox_image(self) -> None:
        """The pods' sandbox: catatonit (static, from podman's dependencies) as a one-file image."""
        if SANDBOX_IMAGE in self.images():
            return
        context = self.workdir / "pause"
        context.mkdir()
        shutil.copy("/usr/bin/catatonit", context / "catatonit")
        (context / "Containerfile").write_text(
            'FROM scratch\nCOPY catatonit /pause\nUSER 65535:65535\nENTRYPOINT ["/pause", "-P"]\n')
        run("podman", "build", "--quiet", "--tag", SANDBOX_IMAGE, str(context))
        self.import_from_podman(SANDBOX_IMAGE)

    def import_from_podman(self, *refs: str) -> None:
        """Copy podman's images into containerd's k8s.io namespace (those already there are left as they are): an
        OCI layout of them, read from podman's store, with only the layers containerd lacks."""
        wanted = [ref for ref in refs if ref not in self.images()]
        if not wanted:
            return
        with tempfile.TemporaryFile() as errors:
            importer = subprocess.Popen(["ctr", "--address", str(self.socket), "--namespace", CONTAINERD_NAMESPACE,
                                         "images", "import", "-"], stdin=subprocess.PIPE, stdout=errors, stderr=errors)
            try:
                with tarfile.open(fileobj=importer.stdin, mode="w|") as archive:
                    PodmanStore().write_oci_layout(archive, wanted, skip=self._content())
            finally:
                importer.stdin.close()
                importer.wait(1800)
            errors.seek(0)
            if importer.returncode != 0:
                raise ClusterError(f"importing {wanted}: {errors.read().decode(errors='replace')}")
        left = [ref for ref in wanted if ref not in self.images()]
        assert not left, f"not imported: {left}"

    def _content(self) -> set[str]:
        return set(self.ctr("content", "list", "--quiet").stdout.decode().split())

    def remove_images_except(self, keep) -> None:
        """Remove the project's images that are not in `keep` (and not the sandbox's), with the references by image
        ID (`sha256:...`) that containerd's CRI plugin adds to each image it sees, which would keep their layers."""
        targets = {}  # reference -> its manifest's digest
        for line in self.ctr("images", "list").stdout.decode().splitlines()[1:]:
            ref, _kind, digest = line.split()[:3]
            targets[ref] = digest
        stale = {ref for ref in targets if ref.startswith(IMAGE_PREFIX) and ref not in set(keep)}
        named = {digest for ref, digest in targets.items() if not ref.startswith("sha256:") and ref not in stale}
        stale |= {ref for ref, digest in targets.items() if ref.startswith("sha256:") and digest not in named}
        if stale:
            self.ctr("images", "remove", "--sync", *sorted(stale))

    def import_disk_need(self, *refs: str) -> int:
        """The disk that importing podman's `refs` takes: the layers containerd lacks, and their snapshots."""
        present = self._content()
        return 2 * sum(size for digest, size in PodmanStore().layer_sizes(*refs).items() if digest not in present)

    def _api_endpoint(self, port: int) -> None:
        """The `kubernetes` Service's endpoint: the relay (the API server itself listens on loopback only)."""
        self.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes-realnode", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes",
                                    "endpointslice.kubernetes.io/managed-by": "tests.realnode"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [GATEWAY], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }))

    @staticmethod
    def _cgroups() -> None:
        """The kubelet's cgroup root, in every hierarchy (cgroup v1; cpuset's needs its parent's cpus and mems)."""
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            if not hierarchy.is_dir() or not (hierarchy / "cgroup.procs").exists():
                continue
            top = hierarchy / CGROUP_ROOT
            top.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / name).exists():
                    (top / name).write_text((hierarchy / name).read_text())

    def _kubelet(self) -> None:
        config = self.workdir / "kubelet.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.cp.workdir / "pki" / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "failCgroupV1": False,
            "failSwapOn": False,
            "registerWithTaints": [TAINT],
            "podLogsDir": str(self.workdir / "pod-logs"),
            "resolvConf": "/etc/resolv.conf",
            # The machine's disk is shared: neither evict nor collect the imported images for its use.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "maxPods": 20,
        }))
        self._spawn("kubelet", [
            str(self.bin_dir / "kubelet"), f"--config={config}", f"--kubeconfig={self.kubelet_kubeconfig}",
            f"--root-dir={self.workdir / 'kubelet'}", f"--cert-dir={self.workdir / 'kubelet-pki'}",
            f"--volume-plugin-dir={self.workdir / 'volume-plugins'}", f"--hostname-override={self.name}",
            f"--node-labels={POOL_LABEL}={POOL},type={POOL}", "--v=1",
        ])

    def _kube_proxy(self) -> None:
        config = self.workdir / "kube-proxy.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(self.proxy_kubeconfig)},
            "hostnameOverride": self.name,
            "clusterCIDR": POD_CIDR,
            "bindAddress": "127.0.0.1",
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "nodePortAddresses": [f"{GATEWAY}/32"],
            "iptables": {"localhostNodePorts": False},
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }))
        self._spawn("kube-proxy", [str(self.bin_dir / "kube-proxy"), f"--config={config}", "--v=1"])

    def _ready(self) -> bool:
        out = self.cp.kubectl("get", "node", self.name, "-o", "json", check=False)
        if out.returncode != 0:
            return False
        conditions = json.loads(out.stdout)["status"].get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _wait(self, what: str, check, deadline: float) -> None:
        while not check():
            dead = [p for p in self.processes if p.popen.poll() is not None]
            if dead:
                raise ClusterError(f"{dead[0].name} exited {dead[0].popen.returncode} waiting for {what}:\n"
                                   f"{dead[0].tail()}")
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{p.tail(15)}" for p in self.processes)
                raise ClusterError(f"timed out waiting for {what}\n{logs}")
            time.sleep(0.3)

    # ------------------------------------------------------------ stop

    def leave(self) -> None:
        """Drain and remove the node, stop its processes and remove all they made."""
        self.cp.kubectl("delete", "pods", "--all-namespaces", "--field-selector", f"spec.nodeName={self.name}",
                        "--grace-period=1", "--wait=false", check=False)
        self._remove_containers()
        for name in ("kube-proxy", "kubelet"):
            self._stop(name)
        self.cp.kubectl("delete", "node", self.name, "--ignore-not-found", "--wait=false", check=False)
        self.cp.kubectl("delete", "endpointslice", "-n", "default", "kubernetes-realnode", "--ignore-not-found",
                        check=False)
        if self.relay:
            self.relay.close()
        self._remove_containers()
        self._stop("containerd")
        clear_host(self.workdir)
        for p in self.processes:
            p.close()
        if self._lock:
            if not self.leftovers():
                state_file().unlink(missing_ok=True)
            self._lock.close()  # releases the flock

    def _stop(self, name: str) -> None:
        for p in self.processes:
            if p.name == name:
                p.stop()

    def _remove_containers(self) -> None:
        """Wait for the kubelet to stop the pods it runs (the CRI tears down their networks); kill what is left."""
        if not self.socket.exists():
            return
        containerd = next((p for p in self.processes if p.name == "containerd"), None)
        if containerd is None or containerd.popen.poll() is not None:
            return
        deadline = time.monotonic() + 30
        while self._tasks() and time.monotonic() < deadline and self._kubelet_running():
            time.sleep(0.5)
        for container in self._tasks():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", container, check=False)
        deadline = time.monotonic() + 10
        while self._tasks() and time.monotonic() < deadline:
            time.sleep(0.2)
        for container in self.ctr("containers", "list", "--quiet", check=False).stdout.decode().split():
            self.ctr("tasks", "delete", "--force", container, check=False)
            self.ctr("containers", "delete", container, check=False)

    def _kubelet_running(self) -> bool:
        return any(p.name == "kubelet" and p.popen.poll() is None for p in self.processes)

    def _tasks(self) -> list[str]:
        out = self.ctr("tasks", "list", "--quiet", check=False)
        return out.stdout.decode().split() if out.returncode == 0 else []

    # ------------------------------------------------------------ what is left

    def mounts(self) -> list[str]:
        return mounts_under(self.workdir)

    def leftovers(self) -> list[str]:
        """Everything of the node still on the machine (empty after `leave()`)."""
        left = [f"process {p.name} ({p.popen.pid})" for p in self.processes if p.popen.poll() is None]
        left += [f"containerd shim {pid}" for pid in shims_of(self.socket)]
        left += [f"mount {m}" for m in self.mounts()]
        if run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
            left.append(f"bridge {BRIDGE}")
        left += [f"veth {line}" for line in run("ip", "-o", "link", "show", "master", BRIDGE,
                                                 check=False).stdout.decode().splitlines()]
        netns = self.workdir / "containerd-state"
        if netns.exists():
            left.append(f"state {netns}")
        for save in ("iptables-save", "ip6tables-save"):
            if shutil.which(save):
                left += [f"{save}: {line}" for line in run(save, check=False).stdout.decode().splitlines()
                         if any(m in line for m in MARKERS)]
        left += [f"route {line}" for line in run("ip", "route", check=False).stdout.decode().splitlines()
                 if any(m in line for m in MARKERS)]
        left += [f"cgroup {h / CGROUP_ROOT}" for h in Path("/sys/fs/cgroup").iterdir() if (h / CGROUP_ROOT).exists()]
        return left


# ---------------------------------------------------------------- the host: what a node leaves, and its sweep


def state_file() -> Path:
    """What the node of this machine made (RealNode._record), next to its lock; gone after a clean `leave()`."""
    return cache_dir() / "node.json"


def _identity(pid: int) -> dict:
    """A process as its pid and start time (clock ticks after boot), which no later process of that pid shares."""
    return {"pid": pid, "start": _start_time(pid)}


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the command's parentheses


def _alive(identity: dict) -> bool:
    return identity.get("start") is not None and _start_time(identity["pid"]) == identity["start"]


def shims_of(socket_path: Path | str) -> list[int]:
    """The containerd shims that serve the containerd at `socket_path` (they outlive it)."""
    out = run("pgrep", "-f", f"containerd-shim.*{socket_path}", check=False).stdout.decode()
    return [int(pid) for pid in out.split()]


def mounts_under(*roots: Path | str) -> list[str]:
    """Mount points under `roots`, in mount order."""
    prefixes = tuple(str(root).rstrip("/") + "/" for root in roots)
    points = (line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())
    return [point for point in points if point.startswith(prefixes)]


def cgroup_pids() -> set[int]:
    """Every process in the node's cgroups: the pods' containers."""
    pids = set()
    for procs in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_ROOT}/**/cgroup.procs"):
        try:
            pids.update(int(pid) for pid in procs.read_text().split())
        except OSError:
            pass
    return pids


def sweep_stale(control_plane) -> None:
    """Remove what a node whose owner died before `leave()` left on this machine (called with the lock held, so no
    node is live): its processes, the shims and containers they started, mounts, the bridge, iptables chains,
    cgroups and work directory, and in the API the Node and its pods, whose containers are gone."""
    try:
        state = json.loads(state_file().read_text())
    except FileNotFoundError:
        return
    if _alive(state["owner"]):
        raise NodeBusy(f"process {state['owner']['pid']} left a real node's state in {state_file()} and still runs")
    for _ in range(3):  # a container's process may fork while its cgroup is emptied
        for pid in cgroup_pids() | set(shims_of(state["socket"])):
            _kill(pid)
    for process in state["processes"]:
        if _alive(process):
            _kill(process["pid"])
    control_plane.kubectl("delete", "pods", "--all-namespaces", "--field-selector", f"spec.nodeName={NODE_NAME}",
                          "--force", "--grace-period=0", check=False)
    control_plane.kubectl("delete", "node", NODE_NAME, "--ignore-not-found", check=False)
    clear_host(Path(state["workdir"]), cache_dir() / "containerd")
    state_file().unlink()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def clear_host(workdir: Path, *more_mount_roots: Path) -> None:
    """Remove the node's host state once its processes are gone: kube-proxy's and the CNI plugin's rules, the
    bridge (its veths went with the pods' network namespaces), cgroups, mounts and the work directory."""
    kube_proxy = node_bin_dir() / "kube-proxy"
    if kube_proxy.is_file():
        run(str(kube_proxy), "--cleanup", check=False)
    _remove_rules()
    run("ip", "link", "del", BRIDGE, check=False)
    for path in reversed(mounts_under(workdir, *more_mount_roots)):
        run("umount", "--lazy", path, check=False)
    _remove_cgroups()
    shutil.rmtree(workdir, ignore_errors=True)


def _remove_rules() -> None:
    """Delete the rules and chains that name the node's networks (kube-proxy, the bridge plugin's masquerade)."""
    for save, tool in (("iptables-save", "iptables"), ("ip6tables-save", "ip6tables")):
        if shutil.which(save) is None:
            continue
        table = None
        chains: list[tuple[str, str]] = []
        for line in run(save, check=False).stdout.decode().splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":") and line[1:].startswith(("KUBE-", "CNI-")) and _ours(table, tool,
                                                                                           line[1:].split()[0]):
                chains.append((table, line[1:].split()[0]))
            elif line.startswith("-A ") and any(m in line for m in MARKERS):
                run(tool, "-w", "-t", table, "-D", *shlex.split(line[3:]), check=False)
        for table, chain in chains:
            run(tool, "-w", "-t", table, "-F", chain, check=False)
        for table, chain in chains:
            run(tool, "-w", "-t", table, "-X", chain, check=False)


def _ours(table: str, tool: str, chain: str) -> bool:
    """A KUBE- chain is kube-proxy's or the kubelet's; a CNI- chain ours when its rules name our network."""
    if chain.startswith("KUBE-"):
        return True
    rules = run(tool, "-w", "-t", table, "-S", chain, check=False).stdout.decode()
    return any(m in rules for m in MARKERS)


def _remove_cgroups(timeout: float = 10) -> None:
    """Remove the node's cgroups, deepest first (a killed container's cgroup empties a moment after the kill)."""
    deadline = time.monotonic() + timeout
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / CGROUP_ROOT
        if not top.is_dir():
            continue
        for path in [*sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True),
                     top]:
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
