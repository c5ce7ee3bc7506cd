"""A real node whose process is killed (SIGKILL: no `leave()`) leaves its shims, containers, mounts, network
namespaces, bridge, iptables chains and cgroups behind; the next join sweeps them, then the new node is Ready."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.helpers import apply, get, wait_for
from tests.containers.test_quickstart_in_containers import namespace  # noqa: F401  (the fixture)

from .node import (BRIDGE, CNI_NETWORK, NODE_NAME, NodeBusy, RealNode, _alive, cannot_run, cgroup_pids, mounts_under,
                   pause_pod, run, shims_of, state_file)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# Joins the node to the session's control plane, says where its work directory is, and waits to be killed.
NODE_PROCESS = """
import sys, time
from pathlib import Path
from tests.cluster.controlplane import ControlPlane
from tests.realnode.node import NodeBusy, RealNode
plane = ControlPlane(Path(sys.argv[1]), Path(sys.argv[2]))
plane.server = sys.argv[3]
try:
    node = RealNode.join(plane)
except NodeBusy as busy:
    print("busy:", busy, flush=True)
    sys.exit(0)
print(node.workdir, flush=True)
time.sleep(600)
"""


def cni_chains() -> set[str]:
    """The chains the bridge plugin made for the node's pods (their masquerade rules name its network)."""
    lines = run("iptables-save", "-t", "nat").stdout.decode().splitlines()
    return {line.split(" -j ")[1].split()[0] for line in lines if CNI_NETWORK in line and " -j CNI-" in line}


def bridge_index() -> int | None:
    path = Path(f"/sys/class/net/{BRIDGE}/ifindex")
    return int(path.read_text()) if path.exists() else None


def test_a_killed_nodes_leftovers_are_swept_by_the_next_join(control_plane, namespace, tmp_path):  # noqa: F811
    reason = cannot_run()
    if reason:
        pytest.skip(reason)
    cp = control_plane
    with open(tmp_path / "node-process.log", "w") as log:
        owner = subprocess.Popen([sys.executable, "-c", NODE_PROCESS, str(cp.bin_dir), str(cp.workdir), cp.server],
                                 cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        said = owner.stdout.readline().strip()
        if said.startswith("busy:"):
            pytest.skip(said)
        assert said, (tmp_path / "node-process.log").read_text()[-3000:]
        apply(cp, namespace, pause_pod("left-running"))
        wait_for("the pod running on the node",
                 lambda: get(cp, namespace, "pod", "left-running")["status"].get("phase") == "Running", timeout=120)
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()

    old = Path(said)
    state = json.loads(state_file().read_text())
    assert state["workdir"] == str(old)
    old_node_uid = get(cp, "default", "node", NODE_NAME)["metadata"]["uid"]
    shims, containers, mounts = shims_of(state["socket"]), cgroup_pids(), mounts_under(old)
    chains, bridge = cni_chains(), bridge_index()
    # what the killed node left: its shims and the pod's processes, the pod's mounts and netns, the bridge, rules
    assert shims and containers and mounts and chains and bridge, (shims, containers, mounts, chains, bridge)

    try:
        node = RealNode.join(cp)  # Ready, on a Node object of its own
    except NodeBusy as busy:
        pytest.skip(f"another session took the node after the kill: {busy}")
    try:
        processes = [p for p in state["processes"] if _alive(p)]
        alive = [pid for pid in shims + sorted(containers) if Path(f"/proc/{pid}").exists()]
        assert not processes and not alive, (processes, alive)
        assert not mounts_under(old) and not old.exists()
        assert not chains & cni_chains()
        assert bridge_index() != bridge  # removed; the new node made its own
        assert get(cp, "default", "node", NODE_NAME)["metadata"]["uid"] != old_node_uid
        assert not cp.kubectl("get", "pod", "-n", namespace, "left-running", "--ignore-not-found",
                              "-o", "name").stdout.strip()
    finally:
        node.leave()
    left = node.leftovers()
    assert not left, "the real node left behind:\n" + "\n".join(left)
    assert not state_file().exists()
