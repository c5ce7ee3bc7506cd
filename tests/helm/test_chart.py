"""The chart rendered by the real Helm CLI, without a cluster: lint, CRDs, hardening, RBAC shape, values schema."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from slimserve.controller.config import OperatorConfig
from tests.helm.chart import CHART, REPO, find, helm, kube_version, one, operator_config, operator_container, render
from tests.helm.chart import template as helm_template

NAMESPACED = {"operator": {"watchNamespaces": ["team-a", "team-b"]}}
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
# Never granted, in either mode (secrets: get alone, see test_rbac_has_no_wildcards_or_dangerous_rights).
FORBIDDEN_RESOURCES = {"configmaps", "nodes", "namespaces", "clusterroles", "clusterrolebindings", "*"}
FORBIDDEN_VERBS = {"*", "escalate", "bind", "impersonate", "deletecollection"}


@pytest.fixture(scope="module")
def cluster_mode() -> list[dict]:
    return render()


@pytest.fixture(scope="module")
def namespaced_mode() -> list[dict]:
    return render(NAMESPACED)


# ---- lint and CRDs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [{}, NAMESPACED, {"metrics": {"serviceMonitor": {"enabled": True}}, "operator": {"peering": {"enabled": False}}}],
    ids=["defaults", "namespaced", "servicemonitor-standalone"],
)
def test_lint_strict_is_clean(values, tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    out = helm("lint", "--strict", str(CHART), "--values", str(path), "--kube-version", kube_version())
    assert "0 chart(s) failed" in out.stdout
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout


def test_chart_crds_are_the_generated_ones():
    """charts/slimserve/crds holds the top-level CRDs byte for byte (`make crds` writes both) plus Kopf's."""
    top = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert top and {name: chart.get(name) for name in top} == top
    assert set(chart) - set(top) == {"kopf-peering.yaml"}
    check = subprocess.run([sys.executable, "-m", "slimserve.api.crd", str(CHART / "crds"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_install_includes_every_crd():
    crds = [o for o in render(None, "--include-crds") if o["kind"] == "CustomResourceDefinition"]
    names = {c["metadata"]["name"] for c in crds}
    assert names == {"compressionjobs.slimserve.io", "modelservices.slimserve.io", "batchinferences.slimserve.io",
                     "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


# ---- objects and labels ---------------------------------------------------------------------------------


def test_cluster_mode_objects(cluster_mode):
    kinds = sorted(o["kind"] for o in cluster_mode)
    assert kinds == sorted(["ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Service",
                            "Deployment", "ClusterKopfPeering", "NetworkPolicy"])


def test_network_policy_admits_only_the_served_ports(cluster_mode):
    policy = one(cluster_mode, "NetworkPolicy")["spec"]
    container = operator_container(cluster_mode)
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"]["matchLabels"].items() <= one(cluster_mode, "Deployment")["spec"]["template"][
        "metadata"]["labels"].items()
    assert sorted(p["port"] for p in policy["ingress"][0]["ports"]) == sorted(
        p["containerPort"] for p in container["ports"])
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    restricted = one(render({"networkPolicy": {"from": peers}}), "NetworkPolicy")["spec"]
    assert restricted["ingress"][0]["from"] == peers


def test_every_object_has_the_standard_labels(cluster_mode, namespaced_mode):
    for obj in cluster_mode + namespaced_mode:
        labels = obj["metadata"].get("labels") or {}
        missing = [label for label in STANDARD_LABELS if label not in labels]
        assert not missing, f"{obj['kind']} {obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_common_labels_reach_every_object():
    for obj in render({"commonLabels": {"team": "ml-platform"}}):
        assert obj["metadata"]["labels"]["team"] == "ml-platform"


# ---- the operator Deployment ----------------------------------------------------------------------------


def test_operator_pod_is_hardened(cluster_mode):
    pod = one(cluster_mode, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(cluster_mode)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["runAsUser"] == 65532 and security["runAsNonRoot"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert volumes[mounts["/etc/slimserve"]]["configMap"]["name"] == one(cluster_mode, "ConfigMap")["metadata"]["name"]
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_operator_probes_use_kopf_liveness_endpoint(cluster_mode):
    container = operator_container(cluster_mode)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"--liveness=http://0.0.0.0:{ports['health']}/healthz" in container["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_one_replica_that_never_overlaps_another(cluster_mode):
    spec = one(cluster_mode, "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    container = operator_container(cluster_mode)
    assert "--peering=slimserve" in container["args"]
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    assert one(cluster_mode, "ClusterKopfPeering")["metadata"]["name"] == "slimserve"


def test_standalone_without_peering():
    objects = render({"operator": {"peering": {"enabled": False}}})
    assert not find(objects, "ClusterKopfPeering")
    assert not any(a.startswith("--peering") for a in operator_container(objects)["args"])
    rules = one(objects, "ClusterRole")["rules"]
    assert not any("kopf.dev" in r["apiGroups"] for r in rules)


def test_operator_arguments_follow_values():
    objects = render({"operator": {"logLevel": "debug"}, "metrics": {"port": 9300}})
    args = operator_container(objects)["args"]
    assert "--log-level=debug" in args and "--metrics-port=9300" in args
    assert "--config=/etc/slimserve/operator.yaml" in args
    service = one(objects, "Service")
    assert service["spec"]["ports"][0]["port"] == 9300 and service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_operator_flags_exist():
    """Every flag the chart passes is one `slimserve operator` accepts."""
    args = operator_container(render(NAMESPACED))["args"]
    flags = {a.split("=", 1)[0] for a in args}
    usage = subprocess.run([sys.executable, "-m", "slimserve.cli.main", "operator", "--help"],
                           capture_output=True, text=True, check=True).stdout
    for flag in flags:
        assert re.search(rf"{re.escape(flag)}\b", usage), f"`slimserve operator` has no {flag}"


def test_image_references():
    objects = render({"images": {"operator": {"repository": "registry.test/op", "tag": "1.2.3"},
                                 "server": {"repository": "registry.test/srv", "digest": "sha256:" + "0" * 64},
                                 "pullPolicy": "Always"}})
    container = operator_container(objects)
    assert container["image"] == "registry.test/op:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    config = OperatorConfig.model_validate(operator_config(objects))
    assert config.images.server.reference == "registry.test/srv@sha256:" + "0" * 64
    assert config.images.server_gpu.reference == "ghcr.io/slimserve/server:0.1.0-cuda"
    assert config.images.compressor.pull_policy == "Always"


# ---- the operator's configuration -----------------------------------------------------------------------


def test_configuration_is_what_the_operator_reads(cluster_mode):
    """The ConfigMap's operator.yaml is a valid OperatorConfig (unknown keys are errors there)."""
    config = OperatorConfig.model_validate(operator_config(cluster_mode))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(config.node_pools) == set(values["nodePools"])
    assert config.node_pool("gpu").gpu_resource_name == "nvidia.com/gpu"
    assert config.prometheus_address == values["workloads"]["prometheusAddress"]
    assert config.http_interceptor_address == values["workloads"]["httpInterceptorAddress"]


def test_node_pools_map_to_the_configuration():
    pools = {"a100": {"nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"},
                      "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                      "gpuResourceName": "nvidia.com/gpu", "gpusPerPod": 2},
             "cpu": {"nodeSelector": {"pool": "general"}}}
    objects = render({"nodePools": pools, "images": {"pullSecrets": ["ghcr-pull"]}})
    config = OperatorConfig.model_validate(operator_config(objects))
    assert set(config.node_pools) == {"a100", "cpu", "gpu"}  # values merge: the default gpu pool stays
    assert config.node_pool("a100").gpus_per_pod == 2
    assert config.node_pool("cpu").node_selector == {"pool": "general", "slimserve.io/pool": "cpu"}
    assert config.image_pull_secrets == ["ghcr-pull"]


def test_a_configuration_change_restarts_the_operator(cluster_mode):
    before = one(cluster_mode, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    changed = render({"nodePools": {"cpu": {"tolerations": [{"key": "spot", "operator": "Exists"}]}}})
    after = one(changed, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert before != after


# ---- RBAC -----------------------------------------------------------------------------------------------


def _rules(obj: dict) -> list[dict]:
    return obj.get("rules") or []


def test_rbac_has_no_wildcards_or_dangerous_rights(cluster_mode, namespaced_mode):
    roles = find(cluster_mode, "ClusterRole") + find(namespaced_mode, "Role")
    assert roles
    for role in roles:
        for rule in _rules(role):
            assert not FORBIDDEN_RESOURCES & set(rule["resources"]), rule
            if "secrets" in rule["resources"]:  # a TLS Secret's metadata, by name: never listed or watched
                assert (rule["resources"], rule["verbs"]) == (["secrets"], ["get"]), rule
            assert not FORBIDDEN_VERBS & set(rule["verbs"]), rule
            assert "*" not in rule["apiGroups"]


def test_namespaced_mode_has_no_cluster_rights(namespaced_mode):
    assert not find(namespaced_mode, "ClusterRole") and not find(namespaced_mode, "ClusterRoleBinding")
    assert not find(namespaced_mode, "ClusterKopfPeering")
    roles, bindings = find(namespaced_mode, "Role"), find(namespaced_mode, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    account = one(namespaced_mode, "ServiceAccount")["metadata"]
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"],
                                        "namespace": account["namespace"]}]
        assert binding["roleRef"]["kind"] == "Role"
    for role in roles:
        resources = {res for rule in _rules(role) for res in rule["resources"]}
        assert "customresourcedefinitions" not in resources and "clusterkopfpeerings" not in resources
        assert "kopfpeerings" in resources
    peerings = find(namespaced_mode, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    args = operator_container(namespaced_mode)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


def test_cluster_and_namespaced_modes_grant_the_same_namespaced_rights(cluster_mode, namespaced_mode):
    cluster_rules = [r for r in _rules(one(cluster_mode, "ClusterRole"))
                     if not {"customresourcedefinitions", "clusterkopfpeerings"} & set(r["resources"])]
    role_rules = [r for r in _rules(find(namespaced_mode, "Role")[0]) if "kopfpeerings" not in r["resources"]]
    assert cluster_rules == role_rules


def test_the_operator_holds_what_it_grants_compression_pods(cluster_mode):
    """RBAC lets the operator create a Role only with rights it holds itself (escalation prevention)."""
    from slimserve.controller.builders.compression_job import build_access

    granted = next(o for o in build_access(name="job", namespace="ns") if o["kind"] == "Role")["rules"]
    held = _rules(one(cluster_mode, "ClusterRole"))
    for rule in granted:
        for resource in rule["resources"]:
            for verb in rule["verbs"]:
                assert any(set(rule["apiGroups"]) <= set(h["apiGroups"]) and resource in h["resources"]
                           and verb in h["verbs"] and not h.get("resourceNames") for h in held), (resource, verb)


def test_rbac_can_be_left_to_an_administrator():
    objects = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "given"}})
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                                                     "ServiceAccount")]
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "given"


# ---- metrics --------------------------------------------------------------------------------------------


def test_service_monitor_is_optional(cluster_mode):
    assert not find(cluster_mode, "ServiceMonitor")
    objects = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"},
                                                     "interval": "15s"}}})
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s",
                                            "scrapeTimeout": "10s"}]
    service = one(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_metrics_can_be_off():
    objects = render({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}})
    assert not find(objects, "Service") and not find(objects, "ServiceMonitor")
    assert not any(a.startswith("--metrics-port") for a in operator_container(objects)["args"])


# ---- the server pods: PodMonitor and NetworkPolicy ------------------------------------------------------


def server_pod_template(**spec) -> dict:
    """The pod template the operator builds for a ModelService with `spec` (the labels and ports it really has)."""
    from slimserve.api.model_service import ModelServiceSpec
    from slimserve.controller.builders import model_service as builder

    config = OperatorConfig()
    parsed = ModelServiceSpec.from_json({"model": {"uri": "builtin://digits-mlp"}, **spec})
    owner = builder.Owner(name="digits", namespace="team-a", uid="uid-1")
    deployment = builder.build_deployment(owner, parsed, builder.ArtifactToServe(parsed.model.uri),
                                          config.node_pool(parsed.node_pool), config, replicas=1)
    return deployment["spec"]["template"]


def test_server_monitor_and_network_policy_are_off_by_default(cluster_mode):
    assert not find(cluster_mode, "PodMonitor")
    assert len(find(cluster_mode, "NetworkPolicy")) == 1  # the operator's own


def test_server_pod_monitor_scrapes_the_pods_the_operator_makes(cluster_mode):
    objects = render({"servers": {"podMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    monitor = one(objects, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["labels"]["release"] == "prom"
    pod = server_pod_template()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= one(cluster_mode, "Deployment")["spec"][
        "template"]["metadata"]["labels"].items()  # never the operator's pod
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {port["name"] for port in pod["spec"]["containers"][0]["ports"]}
    assert (endpoint["path"], endpoint["scheme"]) == ("/metrics", "http")
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    namespaced = one(render({**NAMESPACED, "servers": {"podMonitor": {"enabled": True}}}), "PodMonitor")
    assert namespaced["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_server_network_policy_admits_only_the_serving_ports():
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}]
    objects = render({**NAMESPACED, "servers": {"networkPolicy": {"enabled": True, "from": peers}}})
    policies = [p for p in find(objects, "NetworkPolicy") if p["metadata"]["name"].endswith("-servers")]
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["team-a", "team-b"]
    pod = server_pod_template()
    for policy in policies:
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"] and spec["ingress"][0]["from"] == peers
        assert spec["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        admitted = {port["port"] for port in spec["ingress"][0]["ports"]}
        # and "probes", the plain port a ModelService whose TLS requires client certificates adds
        assert admitted == {port["name"] for port in pod["spec"]["containers"][0]["ports"]} | {"probes"}
    listed = render({"servers": {"networkPolicy": {"enabled": True, "namespaces": ["ml"]}}})
    assert [p["metadata"]["namespace"] for p in find(listed, "NetworkPolicy") if "-servers" in p["metadata"]["name"]] == ["ml"]


# ---- values: documentation and schema -------------------------------------------------------------------


def _walk_schema(node, path="$"):
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for key, value in node.items():
            yield from _walk_schema(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk_schema(value, f"{path}[{index}]")


def test_schema_is_closed_at_every_level():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    open_objects = [path for path, node in _walk_schema(schema)
                    if "additionalProperties" not in node and path != "$.properties.global"]
    assert not open_objects


def test_every_value_is_documented_with_an_example():
    """Each key of values.yaml that holds a value has a `# --` comment block above it with an example (a boolean's
    two values need none); keys inside a documented value (a map, a list) are its data."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    problems = []
    ancestors: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)(- )?([A-Za-z][\w./-]*):( .*)?$", line)
        if not match or line.strip().startswith("#"):
            continue
        indent = len(match.group(1))
        while ancestors and ancestors[-1][0] >= indent:
            ancestors.pop()
        block = []
        for previous in reversed(lines[:index]):
            if not previous.strip().startswith("#"):
                break
            block.insert(0, previous.strip())
        documented = bool(block) and block[0].startswith("# --")
        inside_documented_value = any(doc for _, doc in ancestors) or match.group(2)
        ancestors.append((indent, documented))
        is_section = not (match.group(4) or "").strip()
        if inside_documented_value or (is_section and not documented):
            continue  # data of a documented value, or a section whose keys carry the comments
        text = " ".join(block)
        if not documented:
            problems.append(f"{match.group(3)}: no comment")
        elif (match.group(4) or "").strip() not in ("true", "false") and not re.search(r"e\.g\.| or |Example", text):
            problems.append(f"{match.group(3)}: no example")
    assert not problems


BAD_VALUES = [
    ({"replicaCount": 2}, "replicaCount"),
    ({"operator": {"replicas": 3}}, "replicas"),
    ({"operator": {"logLevel": "verbose"}}, "logLevel"),
    ({"operator": {"watchNamespaces": ["Team_A"]}}, "watchNamespaces"),
    ({"operator": {"healthPort": 80}}, "healthPort"),
    ({"operator": {"resources": {"limits": {"gpu": 1}}}}, "'gpu'"),
    ({"images": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"images": {"server": {"digest": "sha256:xyz"}}}, "digest"),
    ({"images": {"operator": {"registry": "ghcr.io"}}}, "registry"),
    ({"nodePools": {"GPU_Pool": {"nodeSelector": {}}}}, "GPU_Pool"),
    ({"nodePools": {"cpu": {"gpuResourceName": "gpu"}}}, "gpuResourceName"),
    ({"nodePools": {"cpu": {"nodeSelectors": {"a": "b"}}}}, "nodeSelectors"),
    ({"metrics": {"port": "9090"}}, "port"),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "interval"),
    ({"workloads": {"prometheusAddress": "prometheus:9090"}}, "prometheusAddress"),
    ({"workloads": {"hubEndpoint": "hub-mirror:443"}}, "hubEndpoint"),
    ({"workloads": {"httpInterceptorAddress": "http://proxy.keda:8080/path"}}, "httpInterceptorAddress"),
    ({"serviceAccount": {"create": "yes"}}, "create"),
    ({"networkPolicy": {"from": [{"podSelectors": {}}]}}, "podSelectors"),
    ({"servers": {"podMonitor": {"scheme": "ftp"}}}, "scheme"),
    ({"servers": {"networkPolicy": {"namespaces": ["Team_A"]}}}, "namespaces"),
    # Quantities as the CRDs and the operator's configuration take them: an integer or a Kubernetes quantity.
    ({"workloads": {"compressorResources": {"requests": {"cpu": 0.5}}}}, "cpu"),
    ({"workloads": {"compressorResources": {"limits": {"memory": "lots"}}}}, "memory"),
]


@pytest.mark.parametrize("values,field", BAD_VALUES, ids=[field for _, field in BAD_VALUES])
def test_bad_values_are_rejected_naming_the_field(values, field):
    out = helm_template(values, check=False)
    assert out.returncode != 0
    assert "values don't meet the specifications of the schema" in out.stderr
    assert field in out.stderr, out.stderr


def test_quantities_the_schema_admits_are_ones_the_operator_reads():
    quantities = {"requests": {"cpu": "0.5", "memory": "1.5Gi"}, "limits": {"cpu": 2, "memory": "2G"}}
    config = operator_config(render({"workloads": {"compressorResources": quantities}}))
    resources = OperatorConfig.model_validate(config).compressor_resources
    assert resources.requests == {"cpu": "0.5", "memory": "1.5Gi"} and resources.limits == {"cpu": 2, "memory": "2G"}


def test_a_missing_service_account_name_is_an_error():
    out = helm_template({"serviceAccount": {"create": False}}, check=False)
    assert out.returncode != 0 and "serviceAccount.name is required" in out.stderr
