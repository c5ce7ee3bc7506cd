"""The ModelService's child manifests, built without a cluster."""

from __future__ import annotations

import copy
import re

import pytest

from slimserve.api.model_service import ModelServiceSpec
from slimserve.controller.builders import model_service as b
from slimserve.controller.config import OperatorConfig

from tests.operator.conftest import TEST_OPERATOR_CONFIG

CONFIG = OperatorConfig.model_validate(TEST_OPERATOR_CONFIG)
OWNER = b.Owner(name="digits", namespace="team-a", uid="0b7c-uid")
MODEL = b.ArtifactToServe("pvc://models/digits-slim", "sha256:" + "ab" * 32)


def spec(**fields) -> ModelServiceSpec:
    return ModelServiceSpec.from_json({"model": {"uri": "pvc://models/digits-slim"}, **fields})


def children(service_spec: ModelServiceSpec, *, model: b.ArtifactToServe = MODEL, keda: bool = False) -> b.Children:
    pool = CONFIG.node_pool(service_spec.node_pool)
    return b.desired_children(OWNER, service_spec, model, pool, CONFIG, keda_installed=keda)


def by_kind(result: b.Children) -> dict[str, dict]:
    return {manifest["kind"]: manifest for manifest in result.apply}


# The kubernetes auth mode's ServiceAccount, Role and RoleBinding: deleted whenever the mode is off.
AUTH_ACCESS = {"ServiceAccount", "Role", "RoleBinding"}


def deleted_kinds(result: b.Children) -> set[str]:
    return {ref.kind for ref in result.delete}


def deployment(service_spec: ModelServiceSpec, **kwargs) -> dict:
    return by_kind(children(service_spec, **kwargs))["Deployment"]


def container(manifest: dict) -> dict:
    (server,) = manifest["spec"]["template"]["spec"]["containers"]
    return server


def env(manifest: dict) -> dict[str, object]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container(manifest)["env"]}


def test_cpu_pool_pod_runs_the_server_image_on_cpu_nodes_without_gpus():
    manifest = deployment(spec(nodePool="cpu"))
    pod = manifest["spec"]["template"]["spec"]
    server = container(manifest)
    assert server["image"] == "registry.test/slimserve/server:test"
    assert server["command"] == ["slimserve", "serve"]
    assert pod["nodeSelector"] == {"slimserve.io/pool": "cpu"}
    assert "tolerations" not in pod
    assert not any("gpu" in name for name in server["resources"]["limits"])
    assert server["resources"] == b.DEFAULT_RESOURCES


def test_gpu_pool_pod_uses_the_cuda_image_tolerates_the_taint_and_requests_a_gpu():
    manifest = deployment(spec(nodePool="gpu"))
    pod = manifest["spec"]["template"]["spec"]
    server = container(manifest)
    assert server["image"] == "registry.test/slimserve/server:test-cuda"
    assert pod["nodeSelector"] == {"slimserve.io/pool": "gpu"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert server["resources"]["requests"]["nvidia.com/gpu"] == 1


def test_resources_from_the_spec_win_and_unset_ones_get_defaults():
    manifest = deployment(spec(nodePool="gpu", resources={"limits": {"cpu": "4", "nvidia.com/gpu": 2}}))
    resources = container(manifest)["resources"]
    assert resources["limits"] == {"cpu": "4", "memory": "2Gi", "nvidia.com/gpu": 2}
    assert resources["requests"] == {"memory": "1Gi", "nvidia.com/gpu": 2}  # cpu: Kubernetes takes the limit


def test_a_request_without_a_limit_is_never_above_a_default_limit():
    resources = container(deployment(spec(resources={"requests": {"memory": "8Gi", "cpu": "500m"}})))["resources"]
    assert resources["requests"] == {"memory": "8Gi", "cpu": "500m"}
    assert resources["limits"] == {"memory": "8Gi", "cpu": "500m"}


def test_server_is_configured_through_its_environment():
    manifest = deployment(spec(modelName="mnist", batching={"maxBatchSize": 8, "maxLatencyMs": 2.5},
                               protocols={"grpcWeb": True}))
    variables = env(manifest)
    assert variables["SLIMSERVE_ARTIFACT"] == MODEL.uri
    assert variables["SLIMSERVE_MODEL_NAME"] == "mnist"
    assert variables["SLIMSERVE_HTTP_PORT"] == "8080"
    assert variables["SLIMSERVE_GRPC_PORT"] == "9000"
    assert variables["SLIMSERVE_MAX_BATCH_SIZE"] == "8"
    assert variables["SLIMSERVE_MAX_LATENCY_MS"] == "2.5"
    assert variables["SLIMSERVE_BATCHING"] == "true"
    assert variables["SLIMSERVE_GRPC_WEB"] == "true"
    assert variables["SLIMSERVE_PLAYGROUND"] == "false"
    assert variables["SLIMSERVE_PVC_ROOT"] == CONFIG.pvc_mount_root
    assert env(deployment(spec()))["SLIMSERVE_MODEL_NAME"] == "digits"  # defaults to the resource's name
    assert env(deployment(spec(batching={"enabled": False})))["SLIMSERVE_BATCHING"] == "false"


def test_ports_probes_and_scrape_annotations():
    manifest = deployment(spec())
    server = container(manifest)
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {"http": 8080, "grpc": 9000}
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    startup = server["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # minutes to load a model
    annotations = manifest["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_pod_is_hardened_and_writes_only_to_empty_dirs():
    manifest = deployment(spec())
    pod = manifest["spec"]["template"]["spec"]
    server = container(manifest)
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert server["securityContext"]["allowPrivilegeEscalation"] is False
    assert server["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {m["mountPath"] for m in server["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp", env(manifest)["SLIMSERVE_CACHE"]}
    assert all("emptyDir" in volumes[m["name"]] for m in server["volumeMounts"] if not m.get("readOnly"))
    assert env(manifest)["HOME"] == "/tmp"


def test_rollout_never_drops_capacity_and_grace_period_covers_the_drain():
    manifest = deployment(spec())
    assert manifest["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = manifest["spec"]["template"]["spec"]
    variables = env(manifest)
    drain = float(variables["SLIMSERVE_DRAIN_TIMEOUT_S"]) + float(variables["SLIMSERVE_SHUTDOWN_DELAY_S"])
    assert pod["terminationGracePeriodSeconds"] > drain


def test_pods_spread_across_nodes_without_blocking_scheduling():
    (spread,) = deployment(spec())["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"] == b.selector_of(OWNER)


def test_pvc_artifact_is_mounted_read_only_where_the_server_resolves_it():
    manifest = deployment(spec())
    pod = manifest["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    mount = next(m for m in container(manifest)["volumeMounts"] if m["name"] == volume["name"])
    assert mount == {"name": volume["name"], "mountPath": "/mnt/pvc/models", "readOnly": True}


def test_s3_artifact_gets_endpoint_region_and_credentials_from_the_secret():
    service_spec = spec(s3={"endpoint": "http://minio.storage:9000", "region": "eu-west-1",
                            "credentialsSecret": {"name": "minio-creds"}})
    manifest = deployment(service_spec, model=b.ArtifactToServe("s3://bucket/digits", "sha256:" + "cd" * 32))
    variables = env(manifest)
    assert variables["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"
    assert variables["AWS_REGION"] == "eu-west-1"
    assert variables["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "minio-creds", "key": "AWS_ACCESS_KEY_ID"}}
    assert variables["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "minio-creds", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert not any("persistentVolumeClaim" in v for v in manifest["spec"]["template"]["spec"]["volumes"])


def test_digest_is_in_the_pod_template_so_a_new_artifact_rolls_and_the_same_one_does_not():
    first = deployment(spec())
    same = deployment(spec())
    new = deployment(spec(), model=b.ArtifactToServe(MODEL.uri, "sha256:" + "ef" * 32))
    assert first == same
    assert first["spec"]["template"]["metadata"]["annotations"][b.DIGEST_ANNOTATION] == MODEL.digest
    assert first["spec"]["template"] != new["spec"]["template"]
    assert env(first)["SLIMSERVE_ARTIFACT_DIGEST"] == MODEL.digest  # the server refuses any other artifact
    no_digest = deployment(spec(), model=b.ArtifactToServe("builtin://digits-mlp"))
    assert b.DIGEST_ANNOTATION not in no_digest["spec"]["template"]["metadata"]["annotations"]
    assert "SLIMSERVE_ARTIFACT_DIGEST" not in env(no_digest)


def test_every_child_is_owned_by_the_service_and_labelled():
    result = children(spec(autoscaling={"metric": "cpu", "maxReplicas": 4}))
    assert {m["kind"] for m in result.apply} == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for manifest in result.apply:
        meta = manifest["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["ownerReferences"] == [
            {"apiVersion": "slimserve.io/v1alpha1", "kind": "ModelService", "name": "digits", "uid": "0b7c-uid",
             "controller": True, "blockOwnerDeletion": True}
        ]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "slimserve-operator"
        assert meta["labels"]["app.kubernetes.io/instance"] == "digits"


def test_service_exposes_http_and_grpc_by_name():
    service = by_kind(children(spec()))["Service"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["port"] == 8080 and ports["http"]["targetPort"] == "http"
    assert ports["grpc"]["port"] == 9000 and ports["grpc"]["appProtocol"] == "grpc"
    assert service["spec"]["selector"] == b.selector_of(OWNER)
    assert b.service_url(OWNER, "cluster.local") == "http://digits.team-a.svc.cluster.local:8080"
    assert b.grpc_address(OWNER, "cluster.local") == "digits.team-a.svc.cluster.local:9000"


def test_names_fit_kubernetes_limits():
    long_owner = b.Owner(name="m" * 120, namespace="ns", uid="u")
    assert len(long_owner.child_name) <= 63 and len(long_owner.service_name) <= 63
    digit_owner = b.Owner(name="1st.model", namespace="ns", uid="u")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", digit_owner.service_name)


DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
TRICKY_NAMES = [
    "my.model", "my-model", "1digits", "msvc-1digits", "msvc-1digits--" + "0" * 8, "a", "a.b-c", "a-b.c", "a-b-c",
    "0", "9.9", "x" * 63, "x" * 64, "x" * 253, "x" * 52 + ".y", "x" * 52 + "-y", "a--deadbeef",
    b.child_name("my.model"), b.child_name("1digits"), b.child_name("x" * 64),
]


def valid_model_service_names(count: int, seed: int = 7):
    """Random DNS-1123 subdomains, biased towards what the derived names look like."""
    import random

    rng = random.Random(seed)
    alphabet = "ab19-."
    while count:
        labels = []
        for _ in range(rng.randint(1, 3)):
            middle = "".join(rng.choice(alphabet.replace(".", "")) for _ in range(rng.randint(0, 6)))
            labels.append(rng.choice("ab19") + (middle + rng.choice("ab19") if middle else ""))
        name = ".".join(labels)
        if rng.random() < 0.2:
            name = f"{name}--{rng.getrandbits(32):08x}"
        if rng.random() < 0.1:
            name = name + "-" + "c" * rng.randint(40, 70)
        if len(name) <= 253:
            count -= 1
            yield name


def test_child_names_are_dns_labels_and_never_collide():
    names = set(TRICKY_NAMES) | set(valid_model_service_names(20000))
    children_of: dict[str, str] = {}
    for name in names:
        derived = b.child_name(name)
        assert DNS_1035_LABEL.fullmatch(derived) and len(derived) <= 63, (name, derived)
        assert derived not in children_of, f"{name!r} and {children_of.get(derived)!r} share {derived!r}"
        children_of[derived] = name


def test_names_that_are_dns_labels_keep_their_children():
    for name in ("digits", "my-model", "msvc-1digits", "x" * 63):
        assert b.child_name(name) == name
    assert b.child_name("my.model").startswith("my-model--")
    assert b.child_name("1digits").startswith("msvc-1digits--")
    derived = b.Owner(name="my.model", namespace="ns", uid="u")
    service = b.build_service(derived)
    assert service["metadata"]["name"] == derived.child_name
    assert service["spec"]["selector"]["app.kubernetes.io/instance"] == derived.child_name
    assert b.service_url(derived, "cluster.local") == f"http://{derived.child_name}.ns.svc.cluster.local:8080"


def test_fixed_replicas_and_no_autoscalers():
    result = children(spec(replicas=3))
    kinds = by_kind(result)
    assert kinds["Deployment"]["spec"]["replicas"] == 3
    assert "HorizontalPodAutoscaler" not in kinds and "ScaledObject" not in kinds
    assert kinds["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert deleted_kinds(result) == {"HorizontalPodAutoscaler"} | AUTH_ACCESS
    assert deleted_kinds(children(spec(replicas=3), keda=True)) == {"HorizontalPodAutoscaler", "ScaledObject"} | AUTH_ACCESS


def test_single_replica_has_no_disruption_budget():
    result = children(spec(replicas=1))
    assert "PodDisruptionBudget" not in by_kind(result)
    assert "PodDisruptionBudget" in deleted_kinds(result)


def test_cpu_autoscaling_leaves_replicas_to_the_hpa():
    result = children(spec(autoscaling={"metric": "cpu", "minReplicas": 2, "maxReplicas": 8, "target": 60}), keda=True)
    kinds = by_kind(result)
    assert "replicas" not in kinds["Deployment"]["spec"]
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "digits"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 8)
    assert hpa["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}
    ]
    assert deleted_kinds(result) == {"ScaledObject"} | AUTH_ACCESS


def test_concurrency_autoscaling_with_keda_renders_a_scaled_object_that_never_scales_to_zero():
    # At zero no pod exports the metric its trigger reads: scaling from zero is the HTTP add-on's.
    result = children(spec(autoscaling={"metric": "concurrency", "minReplicas": 0, "maxReplicas": 5, "target": 4}),
                      keda=True)
    kinds = by_kind(result)
    assert "replicas" not in kinds["Deployment"]["spec"]
    scaled = kinds["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["minReplicaCount"] == 1 and scaled["spec"]["maxReplicaCount"] == 5
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["serverAddress"] == CONFIG.prometheus_address
    assert trigger["metadata"]["threshold"] == "4"
    assert "slimserve_inflight_requests" in trigger["metadata"]["query"]
    assert all(isinstance(v, str) for v in trigger["metadata"].values())  # KEDA's schema: string values
    assert deleted_kinds(result) == {"HorizontalPodAutoscaler"} | AUTH_ACCESS


def test_concurrency_autoscaling_without_keda_runs_the_floor_of_replicas():
    result = children(spec(autoscaling={"metric": "concurrency", "minReplicas": 0, "maxReplicas": 5}), keda=False)
    kinds = by_kind(result)
    assert kinds["Deployment"]["spec"]["replicas"] == 1
    assert "ScaledObject" not in kinds
    assert "ScaledObject" not in deleted_kinds(result)  # without KEDA's API there is none to delete
    two = by_kind(children(spec(autoscaling={"metric": "concurrency", "minReplicas": 2, "maxReplicas": 5})))
    assert two["Deployment"]["spec"]["replicas"] == 2


def test_inflight_query_selects_this_deployments_pods_only():
    query = b.inflight_query(OWNER)
    pods = re.search(r'pod=~"([^"]+)"', query).group(1)
    assert 'namespace="team-a"' in query
    assert re.fullmatch(pods, "digits-7d9c5b8f4-x2k9p")
    assert not re.fullmatch(pods, "digits-v2-7d9c5b8f4-x2k9p")  # another service sharing the prefix


def test_builders_do_not_mutate_their_inputs():
    service_spec = spec(nodePool="gpu", autoscaling={"metric": "cpu"})
    before = copy.deepcopy(CONFIG.node_pool("gpu").tolerations)
    manifest = deployment(service_spec)
    manifest["spec"]["template"]["spec"]["tolerations"][0]["key"] = "changed"
    assert CONFIG.node_pool("gpu").tolerations == before


@pytest.mark.parametrize("uri, claim", [("pvc://models/a/b", "models"), ("file:///models/a", None), ("s3://b/k", None)])
def test_pvc_claim(uri, claim):
    assert b.pvc_claim(uri) == claim


def test_controller_owner_is_read_back_from_a_child():
    manifest = by_kind(children(spec()))["Deployment"]
    assert b.controller_owner(manifest["metadata"]) == "digits"
    foreign = {"ownerReferences": [{**OWNER.reference(), "kind": "CompressionJob"}]}
    assert b.controller_owner(foreign) is None
    assert b.CHILD_SELECTOR == "app.kubernetes.io/managed-by=slimserve-operator,app.kubernetes.io/component=server"
    assert all(manifest["metadata"]["labels"][k] == v for k, v in b.CHILD_LABELS.items())
