"""The local control plane is real Kubernetes: real scheduling, controllers, GC and RBAC."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from tests.cluster.controlplane import ControlPlane
from tests.cluster.helpers import apply, get, wait_for, wait_for_event

pytestmark = pytest.mark.cluster

CPU_NODES = {"kwok-cpu-0", "kwok-cpu-1", "kwok-cpu-2"}
GPU_NODES = {"kwok-gpu-0", "kwok-gpu-1"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def job_condition(cp: ControlPlane, namespace: str, name: str) -> str | None:
    job = get(cp, namespace, "job", name)
    for cond in job.get("status", {}).get("conditions", []):
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return cond["type"]
    return None


def deployment(name: str, replicas: int, pod_spec: dict, annotations: dict | None = None) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels, "annotations": annotations or {}}, "spec": pod_spec},
        },
    }


def container(requests: dict | None = None) -> dict:
    c = {"name": "main", "image": "registry.invalid/slimserve/noop:1"}
    if requests:
        c["resources"] = {"requests": requests, "limits": {k: v for k, v in requests.items() if k == "nvidia.com/gpu"}}
    return c


def job(name: str, *, annotations: dict | None = None, backoff_limit: int = 0, completions: int = 1) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "completions": completions,
            "parallelism": completions,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {"restartPolicy": "Never", "containers": [container()], "nodeSelector": {"slimserve.io/pool": "cpu"}},
            },
        },
    }


def pods_by_node(cp: ControlPlane, namespace: str, selector: str) -> dict[str, str]:
    pods = get(cp, namespace, "pods", "-l", selector)["items"]
    return {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in pods}


# ---------------------------------------------------------------- the components


def pods_on_gpu_nodes(cp: ControlPlane) -> list[str]:
    """Who holds the gpu nodes: namespace/name, phase, and whether and why it is still terminating."""
    pods = json.loads(cp.kubectl("get", "pods", "--all-namespaces", "-o", "json").stdout)["items"]
    return [
        f"{p['metadata']['namespace']}/{p['metadata']['name']} {p['status'].get('phase')}"
        f" deleting={p['metadata'].get('deletionTimestamp')} finalizers={p['metadata'].get('finalizers')}"
        for p in pods if p["spec"].get("nodeName") in GPU_NODES
    ]


def test_components_are_the_pinned_kubernetes(control_plane: ControlPlane):
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.34.")
    assert version["clientVersion"]["gitVersion"] == version["serverVersion"]["gitVersion"]
    nodes = json.loads(control_plane.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    pools = {n["metadata"]["name"]: n["metadata"]["labels"]["slimserve.io/pool"] for n in nodes}
    assert pools == {**{n: "cpu" for n in CPU_NODES}, **{n: "gpu" for n in GPU_NODES}}
    for n in nodes:
        ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"
        if n["metadata"]["name"] in GPU_NODES:
            assert n["status"]["allocatable"]["nvidia.com/gpu"] == "4"
            assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in n["spec"]["taints"]
        else:
            assert n["status"]["allocatable"]["cpu"] == "64"
            assert n["status"]["allocatable"]["memory"] == "256Gi"
    assert control_plane.helm("version", "--short").stdout.startswith("v3.")


# ---------------------------------------------------------------- scheduling


def test_deployment_on_cpu_pool_becomes_available(control_plane: ControlPlane, namespace: str):
    spec = {"nodeSelector": {"slimserve.io/pool": "cpu"}, "containers": [container({"cpu": "500m", "memory": "1Gi"})]}
    apply(control_plane, namespace, deployment("web", 4, spec))
    control_plane.kubectl("wait", "-n", namespace, "deployment/web", "--for=condition=Available", "--timeout=60s")
    status = get(control_plane, namespace, "deployment", "web")["status"]
    assert status["readyReplicas"] == status["availableReplicas"] == 4
    placed = pods_by_node(control_plane, namespace, "app=web")
    assert len(placed) == 4 and set(placed.values()) <= CPU_NODES


def test_gpu_pods_land_only_on_gpu_nodes_and_gpus_are_counted(control_plane: ControlPlane, namespace: str):
    # 2 gpu nodes x 4 GPUs: 8 pods asking one GPU each fit, the ninth cannot.
    spec = {"tolerations": [GPU_TOLERATION], "containers": [container({"cpu": "100m", "nvidia.com/gpu": "1"})]}
    apply(control_plane, namespace, deployment("gpu", 9, spec))
    try:
        wait_for("8 ready gpu pods", lambda: get(control_plane, namespace, "deployment", "gpu")["status"].get("readyReplicas") == 8)
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}; pods on the gpu nodes: {pods_on_gpu_nodes(control_plane)}") from None
    placed = pods_by_node(control_plane, namespace, "app=gpu")
    assert sorted(placed.values()).count("") == 1, placed
    assert {n for n in placed.values() if n} == GPU_NODES

    pending = [p for p, n in placed.items() if not n][0]
    events = wait_for(
        "a FailedScheduling event",
        lambda: [
            e for e in get(control_plane, namespace, "events")["items"]
            if e["involvedObject"]["name"] == pending and e["reason"] == "FailedScheduling"
        ],
    )
    assert "nvidia.com/gpu" in events[-1]["message"]


def test_pods_without_the_toleration_never_land_on_gpu_nodes(control_plane: ControlPlane, namespace: str):
    apply(control_plane, namespace, deployment("plain", 12, {"containers": [container({"cpu": "100m"})]}))
    control_plane.kubectl("wait", "-n", namespace, "deployment/plain", "--for=condition=Available", "--timeout=60s")
    placed = pods_by_node(control_plane, namespace, "app=plain")
    assert len(placed) == 12 and set(placed.values()) <= CPU_NODES

    # Asking for a GPU without tolerating the taint: unschedulable, because of the taint.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpu-no-toleration"},
        "spec": {"containers": [container({"nvidia.com/gpu": "1"})]},
    }
    apply(control_plane, namespace, pod)
    cond = wait_for(
        "PodScheduled=False",
        lambda: [
            c for c in get(control_plane, namespace, "pod", "gpu-no-toleration").get("status", {}).get("conditions", [])
            if c["type"] == "PodScheduled" and c["status"] == "False"
        ],
    )[0]
    assert cond["reason"] == "Unschedulable"
    assert "untolerated taint" in cond["message"] and "nvidia.com/gpu" in cond["message"]
    # The scheduler's verdict, posted after its attempt; it retries only when the cluster changes.
    wait_for_event(control_plane, namespace, "gpu-no-toleration", reason="FailedScheduling", message="untolerated taint")
    # The same pod with the toleration, made afterwards, lands on a GPU node; the first still has none.
    tolerated = {**pod, "metadata": {"name": "gpu-tolerated"}, "spec": {**pod["spec"], "tolerations": [GPU_TOLERATION]}}
    apply(control_plane, namespace, tolerated)
    assert wait_for("the tolerated pod bound",
                    lambda: get(control_plane, namespace, "pod", "gpu-tolerated")["spec"].get("nodeName")) in GPU_NODES
    assert not get(control_plane, namespace, "pod", "gpu-no-toleration")["spec"].get("nodeName")


# ---------------------------------------------------------------- jobs (kwok stages)


def test_job_completes(control_plane: ControlPlane, namespace: str):
    apply(control_plane, namespace, job("ok", completions=2))
    assert wait_for("the job to finish", lambda: job_condition(control_plane, namespace, "ok")) == "Complete"
    assert get(control_plane, namespace, "job", "ok")["status"]["succeeded"] == 2


def test_job_with_fail_annotation_fails_after_backoff_limit(control_plane: ControlPlane, namespace: str):
    apply(control_plane, namespace, job("bad", annotations={"slimserve.io/test-outcome": "fail"}, backoff_limit=1))
    # backoffLimit 1: two pods fail (the second after the controller's ~10s back-off), then the Job fails.
    assert wait_for("the job to finish", lambda: job_condition(control_plane, namespace, "bad"), timeout=90) == "Failed"
    status = get(control_plane, namespace, "job", "bad")["status"]
    assert status["failed"] == 2
    failed = [c for c in status["conditions"] if c["type"] == "Failed"][0]
    assert failed["reason"] == "BackoffLimitExceeded"
    pods = get(control_plane, namespace, "pods", "-l", "job-name=bad")["items"]
    assert len(pods) == 2 and all(p["status"]["phase"] == "Failed" for p in pods)
    code = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]
    assert code == 1


def test_job_with_run_annotation_keeps_running(control_plane: ControlPlane, namespace: str):
    apply(control_plane, namespace, job("long", annotations={"slimserve.io/test-outcome": "run"}))
    wait_for("a ready pod", lambda: get(control_plane, namespace, "job", "long").get("status", {}).get("ready") == 1)
    # A plain Job made afterwards goes through the same kwok stages to its end: by then "long" would have too.
    apply(control_plane, namespace, job("after"))
    assert wait_for("the later job to finish", lambda: job_condition(control_plane, namespace, "after")) == "Complete"
    status = get(control_plane, namespace, "job", "long")["status"]
    assert status.get("active") == 1 and not status.get("succeeded") and job_condition(control_plane, namespace, "long") is None
    pods = get(control_plane, namespace, "pods", "-l", "job-name=long")["items"]
    assert [p["status"]["phase"] for p in pods] == ["Running"]


def test_delay_annotation_shows_running_before_completion(control_plane: ControlPlane, namespace: str):
    apply(control_plane, namespace, job("slow", annotations={"slimserve.io/test-delay": "3s"}))
    wait_for("a ready pod", lambda: get(control_plane, namespace, "job", "slow").get("status", {}).get("ready") == 1)
    assert job_condition(control_plane, namespace, "slow") is None
    assert wait_for("the job to finish", lambda: job_condition(control_plane, namespace, "slow")) == "Complete"


# ---------------------------------------------------------------- garbage collection


def test_deleting_an_owner_collects_its_children(control_plane: ControlPlane, namespace: str):
    owner = get(control_plane, namespace, "configmap", "kube-root-ca.crt")  # exists: the root-ca publisher made it
    assert owner["metadata"]["name"] == "kube-root-ca.crt"
    apply(control_plane, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}})
    uid = get(control_plane, namespace, "configmap", "owner")["metadata"]["uid"]
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
    apply(
        control_plane, namespace,
        *({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"child-{i}", "ownerReferences": [ref]}} for i in range(3)),
    )
    control_plane.kubectl("delete", "-n", namespace, "configmap", "owner")
    wait_for("the children to be collected", lambda: not [
        c for c in get(control_plane, namespace, "configmaps")["items"] if c["metadata"]["name"].startswith("child-")
    ])

    # Deployment -> ReplicaSet -> Pods, deleted in the background by the GC controller.
    apply(control_plane, namespace, deployment("gc", 2, {"nodeSelector": {"slimserve.io/pool": "cpu"}, "containers": [container()]}))
    control_plane.kubectl("wait", "-n", namespace, "deployment/gc", "--for=condition=Available", "--timeout=60s")
    assert get(control_plane, namespace, "replicasets", "-l", "app=gc")["items"]
    control_plane.kubectl("delete", "-n", namespace, "deployment", "gc", "--cascade=background", "--wait=false")
    wait_for("replicasets and pods to be collected", lambda: not get(control_plane, namespace, "replicasets,pods", "-l", "app=gc")["items"])


# ---------------------------------------------------------------- authentication and RBAC


def test_service_account_without_permission_gets_403(control_plane: ControlPlane, namespace: str):
    from kubernetes import client

    kubeconfig = control_plane.service_account_kubeconfig(namespace, "reader")
    denied = control_plane.kubectl("get", "pods", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr and "system:serviceaccount:%s:reader" % namespace in denied.stderr

    whoami = json.loads(control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:reader"

    from kubernetes import config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    with api:
        with pytest.raises(client.ApiException) as err:
            client.CoreV1Api(api).list_namespaced_pod(namespace)
        assert err.value.status == 403

        # Granting the verb through RBAC makes the same call succeed.
        apply(
            control_plane, namespace,
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
             "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
             "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]},
        )
        wait_for("the RoleBinding to take effect", lambda: _can_list(client.CoreV1Api(api), namespace), timeout=10)
        with pytest.raises(client.ApiException) as err:
            client.CoreV1Api(api).list_namespaced_secret(namespace)
        assert err.value.status == 403


def _can_list(core, namespace: str) -> bool:
    from kubernetes import client

    try:
        core.list_namespaced_pod(namespace)
        return True
    except client.ApiException as e:
        if e.status == 403:
            return False
        raise


def test_admin_api_client(control_plane: ControlPlane, namespace: str):
    from kubernetes import client

    with control_plane.api_client() as api:
        names = {n.metadata.name for n in client.CoreV1Api(api).list_node().items}
        assert names == CPU_NODES | GPU_NODES
        assert client.CoreV1Api(api).read_namespace(namespace).status.phase == "Active"


def test_helm_installs_a_chart(control_plane: ControlPlane, namespace: str, tmp_path: Path):
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\ndata:\n  k: {{ .Values.k | quote }}\n"
    )
    control_plane.helm("install", "probe", str(chart), "-n", namespace, "--set", "k=v", "--wait", "--timeout", "60s")
    assert get(control_plane, namespace, "configmap", "probe-cm")["data"] == {"k": "v"}
    control_plane.helm("uninstall", "probe", "-n", namespace, "--wait")


# ---------------------------------------------------------------- lifecycle


def _ports_of(pid: int) -> set[int]:
    """TCP ports a process listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_a_second_cluster_starts_fast_and_leaves_nothing_behind(control_plane: ControlPlane):
    plane = ControlPlane.start(bin_dir=control_plane.bin_dir)
    try:
        assert plane.started_in is not None and plane.started_in < 30
        assert plane.server != control_plane.server
        pids = [p.popen.pid for p in plane.processes]
        ports = set().union(*(_ports_of(pid) for pid in pids))
        assert int(plane.server.rsplit(":", 1)[1]) in ports
        workdir = plane.workdir
        plane.kubectl("get", "nodes")
    finally:
        plane.stop()
    assert not workdir.exists()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} still there"
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
    # The first cluster is untouched.
    control_plane.kubectl("get", "nodes")
