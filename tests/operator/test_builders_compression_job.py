"""The CompressionJob's manifests, built without a cluster."""

from __future__ import annotations

import json

import pytest

from slimserve.api import CompressionJobSpec
from slimserve.api.common import ResourceRequirements
from slimserve.controller.builders import bounded_name
from slimserve.controller.builders.compression_job import (
    GENERATION_LABEL,
    POD_ANNOTATIONS_ANNOTATION,
    InvalidSpec,
    build_access,
    build_job,
    check_runnable,
    job_name,
    parse_compression_job_spec,
    parse_pod_annotations,
    pvc_claims,
    service_account_name,
)
from slimserve.controller.config import OperatorConfig

CONFIG = OperatorConfig.model_validate(
    {
        "images": {
            "compressor": {"repository": "registry.test/compressor", "tag": "1.0", "pullPolicy": "Always"},
            "compressorGpu": {"repository": "registry.test/compressor", "tag": "1.0-cuda"},
        },
        "nodePools": {
            "cpu": {"nodeSelector": {"slimserve.io/pool": "cpu"}},
            "big-cpu": {"nodeSelector": {"slimserve.io/pool": "big-cpu"}},
            "gpu": {
                "nodeSelector": {"slimserve.io/pool": "gpu"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "gpuResourceName": "nvidia.com/gpu",
                "gpusPerPod": 2,
            },
        },
        "pvcMountRoot": "/data",
        "imagePullSecrets": ["registry-login"],
    }
)


def make_spec(**overrides) -> CompressionJobSpec:
    raw = {
        "model": {"uri": "pvc://models/digits-cnn"},
        "steps": [{"prune": {"amount": 0.5, "finetuneEpochs": 1}}, {"quantize": {"method": "int8-static"}}],
        "output": {"uri": "pvc://artifacts/digits-slim"},
        **overrides,
    }
    return CompressionJobSpec.from_json(raw)


def job_for(spec: CompressionJobSpec, **kwargs) -> dict:
    return build_job(name="digits", namespace="team-a", generation=4, spec=spec, config=CONFIG, **kwargs)


def pod_of(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def container_of(job: dict) -> dict:
    (container,) = pod_of(job)["containers"]
    return container


def env_of(job: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container_of(job)["env"]}


# ---- names --------------------------------------------------------------------------------------------


def test_job_name_is_per_generation_and_deterministic():
    assert job_name("digits", 1) == "digits-g1"
    assert job_name("digits", 2) == "digits-g2"
    assert job_name("digits", 2) == job_name("digits", 2)


def test_long_names_are_cut_to_63_with_a_hash_that_keeps_them_apart():
    first, second = "a" * 80 + "x", "a" * 80 + "y"
    names = {job_name(first, 12), job_name(second, 12)}
    assert len(names) == 2
    for name in names:
        assert len(name) <= 63
        assert name.endswith("-g12")
    assert len(service_account_name(first)) <= 63
    assert bounded_name("short") == "short"


def test_a_cut_never_leaves_a_dash_before_the_hash():
    name = bounded_name("a" * 50 + "-" * 20, "-g1")
    assert "--" not in name and len(name) <= 63


# ---- the Job ------------------------------------------------------------------------------------------


def test_cpu_pool_gets_the_cpu_image_selector_and_no_gpu():
    job = job_for(make_spec(nodePool="cpu"))
    pod, container = pod_of(job), container_of(job)
    assert container["image"] == "registry.test/compressor:1.0"
    assert container["imagePullPolicy"] == "Always"
    assert pod["nodeSelector"] == {"slimserve.io/pool": "cpu"}
    assert "tolerations" not in pod
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert pod["imagePullSecrets"] == [{"name": "registry-login"}]


def test_gpu_pool_gets_the_gpu_image_toleration_and_gpu_limit_next_to_the_users_resources():
    spec = make_spec(nodePool="gpu", resources={"requests": {"cpu": "2"}, "limits": {"memory": "8Gi"}})
    job = job_for(spec)
    pod, container = pod_of(job), container_of(job)
    assert container["image"] == "registry.test/compressor:1.0-cuda"
    assert pod["nodeSelector"] == {"slimserve.io/pool": "gpu"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["resources"] == {"requests": {"cpu": "2"}, "limits": {"memory": "8Gi", "nvidia.com/gpu": 2}}


def test_a_pod_whose_job_names_no_resources_gets_the_configured_defaults_guaranteed():
    container = container_of(job_for(make_spec()))
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    config = CONFIG.model_copy(
        update={"compressor_resources": ResourceRequirements(requests={"cpu": "6", "memory": "24Gi"}, limits={"cpu": "6", "memory": "24Gi"})}
    )
    job = build_job(name="digits", namespace="team-a", generation=1, spec=make_spec(nodePool="gpu"), config=config)
    assert container_of(job)["resources"] == {
        "requests": {"cpu": "6", "memory": "24Gi"},
        "limits": {"cpu": "6", "memory": "24Gi", "nvidia.com/gpu": 2},
    }


@pytest.mark.parametrize(
    "given, expected",
    [
        # The user's request or limit of a resource wins as given; only a resource named nowhere is defaulted.
        ({"requests": {"cpu": "1", "memory": "2Gi"}}, {"requests": {"cpu": "1", "memory": "2Gi"}}),
        ({"limits": {"cpu": 8}}, {"requests": {"memory": "4Gi"}, "limits": {"cpu": 8, "memory": "4Gi"}}),
        ({"requests": {"memory": "16Gi"}}, {"requests": {"cpu": "2", "memory": "16Gi"}, "limits": {"cpu": "2"}}),
        ({"requests": {"ephemeral-storage": "10Gi"}},
         {"requests": {"ephemeral-storage": "10Gi", "cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}),
    ],
)
def test_the_users_resources_win_per_resource(given, expected):
    assert container_of(job_for(make_spec(resources=given)))["resources"] == expected


def test_pod_is_hardened():
    job = job_for(make_spec())
    pod, container = pod_of(job), container_of(job)
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/tmp", "/var/cache/slimserve"):
        assert volumes[mounts[path]] == {"name": mounts[path], "emptyDir": {}}
    assert env_of(job)["HOME"]["value"] == "/tmp"
    assert env_of(job)["SLIMSERVE_CACHE"]["value"] == "/var/cache/slimserve"
    # The pod talks to the API (its own status), as its own ServiceAccount.
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == "digits-compressor"


def test_job_runs_once_per_try_within_the_specs_deadline_and_stays_readable():
    job = job_for(make_spec(backoffLimit=2, activeDeadlineSeconds=900))
    assert job["spec"]["backoffLimit"] == 2
    assert job["spec"]["activeDeadlineSeconds"] == 900
    assert "ttlSecondsAfterFinished" not in job["spec"]
    assert pod_of(job)["restartPolicy"] == "Never"
    container = container_of(job)
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["command"] == ["slimserve"] and container["args"] == ["compress"]


def test_environment_carries_the_spec_the_status_target_and_the_generation():
    spec = make_spec(evaluation={"maxDrop": 0.02})
    env = env_of(job_for(spec))
    assert CompressionJobSpec.from_json(json.loads(env["SLIMSERVE_JOB_SPEC"]["value"])) == spec
    assert env["SLIMSERVE_STATUS_TARGET"]["value"] == "team-a/digits"
    assert env["SLIMSERVE_JOB_GENERATION"]["value"] == "4"
    assert env["SLIMSERVE_PVC_ROOT"]["value"] == "/data"
    assert not any(name.startswith("AWS_") for name in env)


def test_s3_credentials_come_from_the_named_secret_keys_only():
    spec = make_spec(
        model={"uri": "s3://models/digits"},
        s3={"endpoint": "http://minio.storage:9000", "credentialsSecret": {"name": "minio-creds"}},
    )
    env = env_of(job_for(spec))
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"] == {"secretKeyRef": {"name": "minio-creds", "key": key}}
    assert "envFrom" not in container_of(job_for(spec))


def test_the_hub_token_comes_from_the_named_secret_by_reference():
    spec = make_spec(model={"uri": "hf://acme/classifier@v1", "hfTokenSecret": {"name": "hub-token"}})
    env = env_of(job_for(spec))
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub-token", "key": "HF_TOKEN"}}}
    assert "HF_TOKEN" not in env_of(job_for(make_spec(model={"uri": "hf://acme/classifier"})))


def test_model_and_dataset_claims_are_read_only_and_the_output_claim_writable():
    spec = make_spec(
        model={"uri": "pvc://models/digits-cnn"},
        evaluation={"dataset": {"uri": "pvc://datasets/digits.npz"}},
        output={"uri": "pvc://artifacts/digits-slim"},
    )
    job = job_for(spec)
    volumes = {v["name"]: v["persistentVolumeClaim"] for v in pod_of(job)["volumes"] if "persistentVolumeClaim" in v}
    mounts = {m["mountPath"]: m for m in container_of(job)["volumeMounts"] if m["name"] in volumes}
    by_claim = {volumes[m["name"]]["claimName"]: (path, m["readOnly"], volumes[m["name"]]["readOnly"])
                for path, m in mounts.items()}
    assert by_claim == {
        "models": ("/data/models", True, True),
        "datasets": ("/data/datasets", True, True),
        "artifacts": ("/data/artifacts", False, False),
    }


def test_a_claim_shared_by_model_and_output_is_mounted_once_writable():
    spec = make_spec(model={"uri": "pvc://shared/in"}, output={"uri": "pvc://shared/out"})
    assert pvc_claims(spec) == {"shared": False}
    job = job_for(spec)
    assert [v["persistentVolumeClaim"]["claimName"] for v in pod_of(job)["volumes"] if "persistentVolumeClaim" in v] == [
        "shared"
    ]


def test_builtin_model_mounts_no_claim_for_it():
    spec = make_spec(model={"uri": "builtin://digits-cnn"}, output={"uri": "s3://bucket/out"})
    assert pvc_claims(spec) == {}
    assert {v["name"] for v in pod_of(job_for(spec))["volumes"]} == {"scratch", "cache"}


def test_labels_name_the_instance_component_and_generation():
    job = job_for(make_spec())
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["app.kubernetes.io/instance"] == "digits"
        assert labels["app.kubernetes.io/component"] == "compressor"
        assert labels["app.kubernetes.io/managed-by"] == "slimserve-operator"
        assert labels[GENERATION_LABEL] == "4"


def test_pod_annotations_requested_by_the_compression_job_reach_the_pod_template():
    job = job_for(make_spec(), pod_annotations={"sidecar.istio.io/inject": "false"})
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert annotations["sidecar.istio.io/inject"] == "false"
    assert annotations["kubectl.kubernetes.io/default-container"] == "compressor"


# ---- access -------------------------------------------------------------------------------------------


def test_access_allows_get_and_patch_of_this_jobs_status_only():
    account, role, binding = build_access(name="digits", namespace="team-a")
    assert account["kind"] == "ServiceAccount" and account["metadata"]["name"] == "digits-compressor"
    assert account["automountServiceAccountToken"] is False
    assert role["rules"] == [
        {
            "apiGroups": ["slimserve.io"],
            "resources": ["compressionjobs/status"],
            "resourceNames": ["digits"],
            "verbs": ["get", "patch"],
        }
    ]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "digits-compressor"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "digits-compressor", "namespace": "team-a"}]
    for manifest in (account, role, binding):
        assert manifest["metadata"]["namespace"] == "team-a"
        assert manifest["metadata"]["labels"]["app.kubernetes.io/instance"] == "digits"


# ---- validation ---------------------------------------------------------------------------------------


def test_a_runnable_spec_passes():
    check_runnable(make_spec(), CONFIG)
    check_runnable(make_spec(nodePool="gpu", steps=[{"quantize": {"method": "int4-weight-only"}}]), CONFIG)
    for method in ("int4-weight-only", "fp16", "bf16"):  # every format has a kernel (or a cast) on CPUs too
        check_runnable(make_spec(nodePool="big-cpu", steps=[{"quantize": {"method": method}}]), CONFIG)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"nodePool": "tpu"}, "spec.nodePool: unknown node pool 'tpu' (known: big-cpu, cpu, gpu)"),
        ({"model": {"uri": "pvc:///models/x"}}, "spec.model.uri: 'pvc:///models/x' names no claim"),
        ({"model": {"uri": "pvc://Models_1/x"}}, "spec.model.uri: 'Models_1' is not a PersistentVolumeClaim name"),
        ({"output": {"uri": "pvc://out/../etc"}}, "spec.output.uri: 'pvc://out/../etc' must not contain '..'"),
        ({"output": {"uri": "s3:///prefix"}}, "spec.output.uri: 's3:///prefix' names no bucket"),
        ({"output": {"uri": "file:///tmp/out"}}, "spec.output.uri: file:// is inside the compression pod"),
        (
            {"evaluation": {"dataset": {"uri": "pvc:///d.npz"}}},
            "spec.evaluation.dataset.uri: 'pvc:///d.npz' names no claim",
        ),
    ],
)
def test_semantic_errors_name_the_field(overrides, expected):
    with pytest.raises(InvalidSpec) as caught:
        check_runnable(make_spec(**overrides), CONFIG)
    assert expected in str(caught.value)


def test_every_problem_is_reported_at_once():
    spec = make_spec(nodePool="tpu", output={"uri": "file:///tmp/out"})
    with pytest.raises(InvalidSpec) as caught:
        check_runnable(spec, CONFIG)
    assert "spec.nodePool" in str(caught.value) and "spec.output.uri" in str(caught.value)


def test_parse_spec_names_the_bad_field():
    raw = make_spec().to_json()
    raw["steps"][0]["prune"]["amount"] = 1.5
    with pytest.raises(InvalidSpec, match=r"spec\.steps\[0\]\.prune\.amount"):
        parse_compression_job_spec(raw)
    assert parse_compression_job_spec(make_spec().to_json()) == make_spec()


def test_pod_annotations_must_be_a_json_object_of_strings():
    assert parse_pod_annotations(None) == {}
    assert parse_pod_annotations({POD_ANNOTATIONS_ANNOTATION: '{"a/b": "c"}'}) == {"a/b": "c"}
    with pytest.raises(InvalidSpec, match=r"metadata\.annotations\[slimserve\.io/pod-annotations\]: not JSON"):
        parse_pod_annotations({POD_ANNOTATIONS_ANNOTATION: "{oops"})
    with pytest.raises(InvalidSpec, match="JSON object of strings"):
        parse_pod_annotations({POD_ANNOTATIONS_ANNOTATION: '{"a": 1}'})
