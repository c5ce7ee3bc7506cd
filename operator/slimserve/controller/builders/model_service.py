"""Manifests of a ModelService's children: Deployment, Service, HorizontalPodAutoscaler or KEDA ScaledObject,
PodDisruptionBudget.

Pure functions of the spec, the model being served and the operator's configuration. Every child has the
ModelService's (bounded) name, its labels from `labels.py` and a controller ownerReference, so the garbage
collector removes it with its owner. `desired_children` decides which children exist; the handler applies
those and deletes the rest.
"""

from __future__ import annotations

import json
import hashlib
import re
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any

import kopf

from slimserve.api import API_VERSION
from slimserve.api.model_service import AuthSpec, AutoscalingSpec, GenerationSpec, ModelService, ModelServiceSpec
from slimserve.api.uri import pvc_claim
from slimserve.api.workload import AUTH_API_KEYS, DEFAULTS, ServerEnv
from slimserve.controller.builders import (
    DNS_LABEL_MAX,
    hardened_container_security_context,
    hardened_pod_security_context,
    hub_env,
    pod_log_format,
    pool_device,
    pool_placement,
)
from slimserve.controller.builders.http_scaled_object import HTTP_SCALED_OBJECT_REF, build_http_scaled_object, scale_down_delay
from slimserve.controller.config import NodePool, OperatorConfig
from slimserve.controller.labels import MANAGED_BY, selector_labels, standard_labels

COMPONENT = "server"
CONTAINER_NAME = "server"
HTTP_PORT = DEFAULTS.http_port  # REST, /metrics and the health endpoints
GRPC_PORT = DEFAULTS.grpc_port
METRICS_PATH = "/metrics"
LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"
INFLIGHT_METRIC = "slimserve_inflight_requests"

# After SIGTERM the server reports not-ready but keeps serving while endpoints stop routing to it, then
# drains in-flight requests; the grace period covers both with room to exit.
SHUTDOWN_DELAY_SECONDS = 5
DRAIN_SECONDS = int(DEFAULTS.drain_timeout_s)
TERMINATION_GRACE_SECONDS = SHUTDOWN_DELAY_SECONDS + DRAIN_SECONDS + 10
# Model loading (an s3 download, a large checkpoint) may take minutes: the startup probe allows 10.
STARTUP_PROBE_PERIOD_SECONDS = 5
STARTUP_PROBE_FAILURES = 120

DEFAULT_RESOURCES = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}
TMP_MOUNT = "/tmp"
CACHE_MOUNT = "/var/cache/slimserve"
CACHE_SIZE_LIMIT = "10Gi"  # downloaded s3 artifacts live here
MODEL_CACHE_VOLUME = "model-cache"
MODEL_CACHE_MOUNT = "/var/cache/slimserve-models"  # spec.modelCache's or the pool's claim: http(s):// and hf:// downloads

DIGEST_ANNOTATION = "slimserve.io/model-digest"
URI_ANNOTATION = "slimserve.io/model-uri"
# Which model a pod serves while a canary runs: stable (spec.model) or canary (spec.canary.model); its
# slimserve_model_info says so too. Without a canary the pods carry no version (nothing rolls on upgrade).
VERSION_LABEL = "slimserve.io/model-version"
STABLE, CANARY = "stable", "canary"
PROMETHEUS_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(HTTP_PORT),
    "prometheus.io/path": METRICS_PATH,
}

_DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
# The mark of a derived name: "--" and a hash of the resource's name. A name that already ends like this is
# derived too, so a name kept as it is never equals another's derived name.
_NAME_HASH_LENGTH = 8
_DERIVED = re.compile(rf".*--[0-9a-f]{{{_NAME_HASH_LENGTH}}}")
_DIGIT_PREFIX = "msvc-"


def child_name(name: str) -> str:
    """The name of every child of the ModelService `name`, a DNS-1035 label (a Service's name, a label value).

    A name that is such a label already is kept (children made before keep theirs). Any other (dots, a leading
    digit, longer than 63) becomes a readable form plus "--" and a hash of the whole name: two ModelServices
    never share children, `my.model` and `my-model`, `1digits` and `msvc-1digits` included.
    """
    if _DNS_1035_LABEL.fullmatch(name) and not _DERIVED.fullmatch(name):
        return name
    readable = name.replace(".", "-")
    if not readable[:1].isalpha():
        readable = _DIGIT_PREFIX + readable
    digest = hashlib.sha256(name.encode()).hexdigest()[:_NAME_HASH_LENGTH]
    keep = DNS_LABEL_MAX - len(digest) - 2
    return f"{readable[:keep].rstrip('-')}--{digest}"


@dataclass(frozen=True)
class Owner:
    """The ModelService the children belong to."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "Owner":
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])

    @property
    def child_name(self) -> str:
        """Name of every child (Deployment, Service, HPA, PDB, ScaledObject) and the value of its instance label."""
        return child_name(self.name)

    @property
    def service_name(self) -> str:
        """The Service's name: the children's (a DNS-1035 label, as Service names must be)."""
        return self.child_name

    def reference(self) -> dict[str, Any]:
        """The children's controller reference, made as `kopf.adopt` makes the CompressionJob's."""
        body = {"apiVersion": API_VERSION, "kind": ModelService.kind, "metadata": {"name": self.name, "uid": self.uid}}
        return dict(kopf.build_owner_reference(kopf.Body(body)))


@dataclass(frozen=True)
class ArtifactToServe:
    """The artifact the pods load; `digest` is known when it comes from a CompressionJob."""

    uri: str
    digest: str | None = None


@dataclass(frozen=True)
class ChildRef:
    api_version: str
    kind: str
    name: str
    look: bool = False  # deleting it reads whether it exists: no index or record of this process covers it


@dataclass
class Children:
    """What reconciliation applies, and the optional children that must not exist."""

    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[ChildRef] = field(default_factory=list)


# What every child carries whatever its service: for watches and lists of all of them.
CHILD_LABELS = {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/component": COMPONENT}
CHILD_SELECTOR = ",".join(f"{key}={value}" for key, value in CHILD_LABELS.items())


def controller_owner(meta: dict[str, Any]) -> str | None:
    """Name of the ModelService that controls an object with this metadata, if one does."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == ModelService.kind and ref.get("apiVersion") == API_VERSION:
            return ref.get("name")
    return None


def labels_of(owner: Owner) -> dict[str, str]:
    return standard_labels(instance=owner.child_name, component=COMPONENT)


def selector_of(owner: Owner) -> dict[str, str]:
    return selector_labels(instance=owner.child_name, component=COMPONENT)


def selector_string(owner: Owner) -> str:
    """The server pods' selector as a label query (`status.selector`, the scale subresource's)."""
    return ",".join(f"{key}={value}" for key, value in selector_of(owner).items())


def _metadata(owner: Owner, name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels_of(owner),
        "ownerReferences": [owner.reference()],
    }
    if annotations:
        meta["annotations"] = annotations
    return meta


def child_metadata(owner: Owner, name: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A child's metadata with labels beyond the standard ones (a version's)."""
    meta = _metadata(owner, name)
    meta["labels"] = {**meta["labels"], **(extra_labels or {})}
    return meta


def model_name(owner: Owner, spec: ModelServiceSpec) -> str:
    return spec.model_name or owner.name


def service_url(owner: Owner, cluster_domain: str, tls: bool = False) -> str:
    return f"{'https' if tls else 'http'}://{service_host(owner, cluster_domain)}:{HTTP_PORT}"


def grpc_address(owner: Owner, cluster_domain: str) -> str:
    return f"{service_host(owner, cluster_domain)}:{GRPC_PORT}"


def service_host(owner: Owner, cluster_domain: str) -> str:
    return f"{owner.service_name}.{owner.namespace}.svc.{cluster_domain}"


# ---- autoscaling decisions ----------------------------------------------------------------------------


def uses_hpa(spec: ModelServiceSpec) -> bool:
    return spec.autoscaling is not None and spec.autoscaling.metric == "cpu"


def scales_to_zero(spec: ModelServiceSpec) -> bool:
    return spec.autoscaling is not None and spec.autoscaling.min_replicas == 0


def uses_http_add_on(spec: ModelServiceSpec, http_add_on_installed: bool) -> bool:
    """Scale from zero through the KEDA HTTP add-on's interceptor: the only way a request wakes a service at zero."""
    return scales_to_zero(spec) and http_add_on_installed


def uses_keda(spec: ModelServiceSpec, keda_installed: bool, http_add_on_installed: bool = False) -> bool:
    """A Prometheus ScaledObject: concurrency, unless the HTTP add-on scales the service (from zero)."""
    concurrency = spec.autoscaling is not None and spec.autoscaling.metric == "concurrency"
    return concurrency and keda_installed and not uses_http_add_on(spec, http_add_on_installed)


def deployment_replicas(spec: ModelServiceSpec, keda_installed: bool, http_add_on_installed: bool = False) -> int | None:
    """Replicas the operator states, or None when an autoscaler owns the field."""
    if spec.autoscaling is None:
        return spec.replicas
    if uses_hpa(spec) or uses_keda(spec, keda_installed) or uses_http_add_on(spec, http_add_on_installed):
        return None
    return floor_replicas(spec.autoscaling)  # concurrency without KEDA: run the floor


def floor_replicas(autoscaling: AutoscalingSpec) -> int:
    """The fewest replicas without the HTTP add-on: at least one, since nothing else wakes a service at zero."""
    return max(autoscaling.min_replicas, 1)


def needs_disruption_budget(spec: ModelServiceSpec) -> bool:
    """A PDB only when there can be more than one replica (with one it would block every node drain)."""
    if spec.autoscaling is not None:
        return spec.autoscaling.max_replicas > 1
    return spec.replicas > 1


# ---- pod ----------------------------------------------------------------------------------------------


def container_resources(spec: ModelServiceSpec, pool: NodePool) -> dict[str, Any]:
    """The spec's resources, defaults for CPU and memory the spec leaves out, and the pool's GPUs.

    Per resource: neither request nor limit given, both default; only a request, the limit is the request
    (a default limit could be below it; the server's threads follow the CPU limit); only a limit, Kubernetes
    makes the request equal to it.
    """
    given = spec.resources.to_json() if spec.resources else {}
    requests = dict(given.get("requests") or {})
    limits = dict(given.get("limits") or {})
    for resource in ("cpu", "memory"):
        if resource not in requests and resource not in limits:
            requests[resource] = DEFAULT_RESOURCES["requests"][resource]
            limits[resource] = DEFAULT_RESOURCES["limits"][resource]
        elif resource not in limits:
            limits[resource] = requests[resource]
    if pool.has_gpu:
        gpus = limits.get(pool.gpu_resource_name, requests.get(pool.gpu_resource_name, pool.gpus_per_pod))
        limits[pool.gpu_resource_name] = gpus
        requests[pool.gpu_resource_name] = gpus  # extended resources: request equals limit
    return {"requests": requests, "limits": limits}


def server_env(
    owner: Owner, spec: ModelServiceSpec, model: ArtifactToServe, pool: NodePool, config: OperatorConfig,
    version: str | None = None,
) -> list[dict[str, Any]]:
    batching, protocols = spec.batching, spec.protocols
    env = ServerEnv(
        artifact=model.uri,
        model_name=model_name(owner, spec),
        model_version=version,
        host=DEFAULTS.host,
        http_port=HTTP_PORT,
        grpc_port=GRPC_PORT,
        batching=batching.enabled,
        max_batch_size=batching.max_batch_size,
        max_latency_ms=batching.max_latency_ms,
        grpc_web=protocols.grpc_web,
        playground=protocols.playground,
        cors_origins=tuple(protocols.cors_origins),  # empty: CORS closed
        shutdown_delay_s=SHUTDOWN_DELAY_SECONDS,
        drain_timeout_s=DRAIN_SECONDS,
        pvc_root=config.pvc_mount_root,
        cache=CACHE_MOUNT,
        home=TMP_MOUNT,
        # The server refuses anything else: a pod never serves an artifact rewritten in place under the URI.
        artifact_digest=model.digest or None,
        # Off: unset, so existing pods do not roll.
        allow_outside_budget=spec.model.allow_outside_budget or None,
        log_format=pod_log_format(config),
        **tls_settings(spec),
        device=pool_device(pool),
        **auth_settings(owner, spec.auth),
        **observability_settings(owner, spec),
        **generation_settings(spec.generation),
        download_cache=MODEL_CACHE_MOUNT if model_cache_claim(spec, pool) else None,
    )
    return env.to_env() + s3_env(spec) + hub_env(config, spec.model.hf_token_secret)


# ---- auth ---------------------------------------------------------------------------------------------

API_KEYS_VOLUME = "api-keys"
API_KEYS_MOUNT = "/var/run/slimserve/api-keys"
# What the kubernetes mode's pods may do beyond nothing: ask whether a caller may use their ModelService.
# (TokenReview is cluster-scoped, so no namespaced Role can grant it: see docs/security.md.)
ACCESS_REVIEW_RULES = [
    {"apiGroups": ["authorization.k8s.io"], "resources": ["localsubjectaccessreviews"], "verbs": ["create"]}
]
AUTH_ACCESS_KINDS = (("v1", "ServiceAccount"), ("rbac.authorization.k8s.io/v1", "Role"),
                     ("rbac.authorization.k8s.io/v1", "RoleBinding"))


def auth_settings(owner: Owner, auth: AuthSpec | None) -> dict[str, Any]:
    """The server's SLIMSERVE_AUTH_* settings for `spec.auth`; none when it is unset (auth off)."""
    if auth is None:
        return {}
    if auth.mode == AUTH_API_KEYS:
        return {"auth_mode": auth.mode, "auth_api_keys_dir": API_KEYS_MOUNT}
    rights = auth.kubernetes
    return {"auth_mode": auth.mode, "auth_namespace": owner.namespace, "auth_resource_name": owner.name,
            "auth_verb": rights.verb, "auth_subresource": rights.subresource,
            "auth_audiences": tuple(rights.audiences) or None}


def uses_kubernetes_auth(spec: ModelServiceSpec) -> bool:
    return spec.auth is not None and spec.auth.uses_kubernetes


def auth_account_name(owner: Owner) -> str:
    """The server pods' ServiceAccount in the kubernetes mode (also its Role's and RoleBinding's name)."""
    return f"{owner.child_name}-server"


def api_keys_volume(spec: ModelServiceSpec) -> list[dict[str, Any]]:
    """The apiKeys Secret as files, one per key. Optional, so that a missing Secret reaches the server, which
    refuses to start with the reason in its log instead of waiting in ContainerCreating."""
    if spec.auth is None or spec.auth.mode != AUTH_API_KEYS:
        return []
    secret = {"secretName": spec.auth.api_keys_secret.name, "optional": True, "defaultMode": 0o440}
    return [{"name": API_KEYS_VOLUME, "secret": secret}]


def build_auth_access(owner: Owner) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding of the kubernetes mode's pods: LocalSubjectAccessReviews in their
    namespace and nothing else; owned by the ModelService like every other child."""
    name = auth_account_name(owner)
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(owner, name),
               "automountServiceAccountToken": False}  # the pod asks for its token itself
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _metadata(owner, name),
            "rules": ACCESS_REVIEW_RULES}
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(owner, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }
    return [account, role, binding]


# ---- TLS ----------------------------------------------------------------------------------------------

TLS_VOLUME = "tls"
TLS_MOUNT = "/var/run/slimserve/tls"
# Plain HTTP, health and /metrics only: where probes and Prometheus go when clients must present certificates
# (the kubelet presents none).
PROBE_PORT = 8081


def requires_client_certificates(spec: ModelServiceSpec) -> bool:
    return spec.tls is not None and spec.tls.client_auth == "require"


def tls_settings(spec: ModelServiceSpec) -> dict[str, Any]:
    """The server's SLIMSERVE_TLS_* settings (and its probe port) for `spec.tls`; none when it is unset."""
    if spec.tls is None:
        return {}
    probe_port = PROBE_PORT if requires_client_certificates(spec) else None
    return {"tls_dir": TLS_MOUNT, "tls_client_auth": spec.tls.client_auth, "probe_port": probe_port}


def tls_volume(spec: ModelServiceSpec) -> list[dict[str, Any]]:
    """The Secret as files. Optional, so that a Secret deleted after the operator checked it reaches the server,
    which refuses to start (never serving plain text) with the reason in its log, instead of a pod waiting in
    ContainerCreating."""
    if spec.tls is None:
        return []
    return [{"name": TLS_VOLUME, "secret": {"secretName": spec.tls.secret_name, "optional": True, "defaultMode": 0o440}}]


def tls_mounts(spec: ModelServiceSpec) -> list[dict[str, Any]]:
    # The directory, not single files (subPath): the kubelet's atomic swap of a rotated Secret reaches only it.
    return [{"name": volume["name"], "mountPath": TLS_MOUNT, "readOnly": True} for volume in tls_volume(spec)]


def probe_ports(spec: ModelServiceSpec) -> list[dict[str, Any]]:
    return [{"name": "probes", "containerPort": PROBE_PORT, "protocol": "TCP"}] if requires_client_certificates(spec) else []


def probe_target(spec: ModelServiceSpec) -> dict[str, Any]:
    """Where an httpGet probe goes: the HTTP port, over HTTPS with TLS (the kubelet does not verify the
    certificate), or the plain probe port when clients must present certificates."""
    if requires_client_certificates(spec):
        return {"port": "probes"}
    return {"port": "http", "scheme": "HTTPS"} if spec.tls is not None else {"port": "http"}


def prometheus_annotations(spec: ModelServiceSpec) -> dict[str, str]:
    if requires_client_certificates(spec):
        return {**PROMETHEUS_ANNOTATIONS, "prometheus.io/port": str(PROBE_PORT)}
    if spec.tls is not None:
        return {**PROMETHEUS_ANNOTATIONS, "prometheus.io/scheme": "https"}
    return dict(PROMETHEUS_ANNOTATIONS)


def s3_env(spec: ModelServiceSpec) -> list[dict[str, Any]]:
    s3 = spec.s3
    if s3 is None:
        return []
    env: list[dict[str, Any]] = []
    if s3.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": s3.endpoint})
    if s3.region:
        env.append({"name": "AWS_REGION", "value": s3.region})
    if s3.credentials_secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = {"name": s3.credentials_secret.name, "key": key}
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


def _http_probe(path: str, spec: ModelServiceSpec, *, period: int, failures: int, timeout: int = 2) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, **probe_target(spec)},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def server_container(
    owner: Owner, spec: ModelServiceSpec, model: ArtifactToServe, pool: NodePool, config: OperatorConfig,
    version: str | None = None,
) -> dict[str, Any]:
    image = config.images.server_gpu if pool.has_gpu else config.images.server
    mounts = [{"name": "tmp", "mountPath": TMP_MOUNT}, {"name": "cache", "mountPath": CACHE_MOUNT}]
    mounts += [{"name": volume["name"], "mountPath": API_KEYS_MOUNT, "readOnly": True} for volume in api_keys_volume(spec)]
    mounts += tls_mounts(spec)
    if model_cache_claim(spec, pool):
        mounts.append({"name": MODEL_CACHE_VOLUME, "mountPath": MODEL_CACHE_MOUNT})
    claim = pvc_claim(model.uri)
    if claim:
        mounts.append({"name": "model-pvc", "mountPath": f"{config.pvc_mount_root.rstrip('/')}/{claim}", "readOnly": True})
    return {
        "name": CONTAINER_NAME,
        "image": image.reference,
        "imagePullPolicy": image.pull_policy,
        "command": ["slimserve", "serve"],
        "env": server_env(owner, spec, model, pool, config, version),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            *probe_ports(spec),
        ],
        "resources": container_resources(spec, pool),
        "startupProbe": _http_probe(
            READY_PATH, spec, period=STARTUP_PROBE_PERIOD_SECONDS, failures=STARTUP_PROBE_FAILURES
        ),
        "livenessProbe": _http_probe(LIVE_PATH, spec, period=10, failures=3),
        "readinessProbe": _http_probe(READY_PATH, spec, period=5, failures=2),
        "volumeMounts": mounts,
        "securityContext": hardened_container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def model_cache_claim(spec: ModelServiceSpec, pool: NodePool) -> str | None:
    """The claim the server pods share downloads through: spec.modelCache's, else the node pool's, else none."""
    if spec.model_cache:
        return spec.model_cache.claim_name
    return pool.model_cache.claim_name if pool.model_cache else None


def pod_volumes(spec: ModelServiceSpec, model: ArtifactToServe, pool: NodePool) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {"sizeLimit": CACHE_SIZE_LIMIT}},
    ]
    cache_claim = model_cache_claim(spec, pool)
    if cache_claim:
        volumes.append({"name": MODEL_CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache_claim}})
    claim = pvc_claim(model.uri)
    if claim:
        volumes.append({"name": "model-pvc", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    return volumes


def pod_template(
    owner: Owner, spec: ModelServiceSpec, model: ArtifactToServe, pool: NodePool, config: OperatorConfig,
    version: str | None = None,
) -> dict[str, Any]:
    annotations = prometheus_annotations(spec)
    labels = labels_of(owner)
    if version is not None:
        annotations[URI_ANNOTATION] = model.uri
        labels[VERSION_LABEL] = version
    if model.digest:
        annotations[DIGEST_ANNOTATION] = model.digest  # a new artifact changes the template: a rollout
    pod_spec: dict[str, Any] = {
        # A token only for the kubernetes auth mode, which sends its reviews as the pod's own ServiceAccount.
        "automountServiceAccountToken": uses_kubernetes_auth(spec),
        "enableServiceLinks": False,  # hundreds of Services in a namespace would flood the environment
        "securityContext": hardened_pod_security_context(config),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_of(owner)},
                "matchLabelKeys": ["pod-template-hash"],  # spread each rollout's pods, not old and new together
            }
        ],
        "containers": [server_container(owner, spec, model, pool, config, version)],
        "volumes": pod_volumes(spec, model, pool) + api_keys_volume(spec) + tls_volume(spec),
        **pool_placement(pool, config),
    }
    if uses_kubernetes_auth(spec):
        # Also the deprecated serviceAccount, which the API server fills from serviceAccountName: stated, an
        # apply that stops stating both removes both; left to the API server, it would put the name back.
        pod_spec["serviceAccountName"] = pod_spec["serviceAccount"] = auth_account_name(owner)
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec}


# ---- children -----------------------------------------------------------------------------------------


def build_deployment(
    owner: Owner,
    spec: ModelServiceSpec,
    model: ArtifactToServe,
    pool: NodePool,
    config: OperatorConfig,
    *,
    replicas: int | None,
    version: str | None | EllipsisType = ...,
) -> dict[str, Any]:
    """The server Deployment; `replicas` None leaves the field to the autoscaler (HPA or KEDA). `version`: the
    pods' (by default stable while a canary runs, else none).

    Its selector (immutable) has no version: it also matches a canary's pods, which their own ReplicaSet
    controls, so neither Deployment takes the other's pods."""
    if version is ...:
        version = STABLE if spec.canary is not None else None
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_of(owner)},
        "revisionHistoryLimit": 3,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": pod_template(owner, spec, model, pool, config, version),
    }
    if replicas is not None:
        deployment_spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, owner.child_name),
        "spec": deployment_spec,
    }


def build_service(owner: Owner, tls: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, owner.service_name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_of(owner),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP",
                 "appProtocol": "https" if tls else "http"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
            ],
        },
    }


def _scale_target(owner: Owner) -> dict[str, str]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.child_name}


def build_hpa(owner: Owner, autoscaling: AutoscalingSpec) -> dict[str, Any]:
    """autoscaling/v2 on average CPU utilisation (percent of the CPU request)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(owner, owner.child_name),
        "spec": {
            "scaleTargetRef": _scale_target(owner),
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": autoscaling.target}},
                }
            ],
            **_scale_down_behavior(autoscaling),
        },
    }


def _scale_down_behavior(autoscaling: AutoscalingSpec) -> dict[str, Any]:
    """An HPA's `behavior` with the spec's scale-down delay; none (the controller's default) when it is unset."""
    if autoscaling.scale_down_delay_seconds is None:
        return {}
    return {"behavior": {"scaleDown": {"stabilizationWindowSeconds": autoscaling.scale_down_delay_seconds}}}


def inflight_query(owner: Owner) -> str:
    """In-flight requests summed over this Deployment's pods."""
    return f"sum({INFLIGHT_METRIC}{{{pod_matchers(owner.namespace, owner.child_name)}}})"


def pod_matchers(namespace: str, deployment: str) -> str:
    """PromQL label matchers of the pods of a Deployment (Prometheus regexes match whole values): its name, a
    ReplicaSet hash and a pod suffix, as Kubernetes pod discovery labels them (namespace, pod).

    Label values are PromQL double-quoted strings, which read backslash escapes as Go does (`\\-` is an
    error): the regex is quoted for RE2 first, then as a string, so `a.b` reaches RE2 as `a\\.b`.
    """
    pods = f"{_quote_regex(deployment)}-[a-z0-9]{{1,10}}-[a-z0-9]{{5}}"
    return f"namespace={_promql_string(namespace)},pod=~{_promql_string(pods)}"


def _quote_regex(text: str) -> str:
    """`text` as a literal RE2 pattern: Go's regexp.QuoteMeta (Python's re.escape also escapes `-`)."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", text)


def _promql_string(text: str) -> str:
    """A double-quoted PromQL string literal of `text` (JSON's escapes are a subset of PromQL's)."""
    return json.dumps(text)


def build_scaled_object(owner: Owner, autoscaling: AutoscalingSpec, prometheus_address: str) -> dict[str, Any]:
    """KEDA ScaledObject: in-flight requests per replica from Prometheus. Never to zero: at zero no pod exports
    the metric, so nothing would scale the service up again (scale from zero is the HTTP add-on's)."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(owner, owner.child_name),
        "spec": {
            "scaleTargetRef": _scale_target(owner),
            "minReplicaCount": floor_replicas(autoscaling),
            "maxReplicaCount": autoscaling.max_replicas,
            "pollingInterval": 15,
            "cooldownPeriod": scale_down_delay(autoscaling),
            **({"advanced": {"horizontalPodAutoscalerConfig": _scale_down_behavior(autoscaling)}}
               if autoscaling.scale_down_delay_seconds is not None else {}),
            "triggers": [
                {
                    "type": "prometheus",
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": prometheus_address,
                        "query": inflight_query(owner),
                        "threshold": str(autoscaling.target),
                        "activationThreshold": "0",
                    },
                }
            ],
        },
    }


def build_service_http_scaled_object(owner: Owner, autoscaling: AutoscalingSpec, cluster_domain: str) -> dict[str, Any]:
    """The service's HTTPScaledObject: its Service's in-cluster host routed to its HTTP port (REST, gRPC-Web)."""
    return build_http_scaled_object(
        _metadata(owner, owner.child_name), _scale_target(owner), service=owner.service_name, port=HTTP_PORT,
        host=service_host(owner, cluster_domain), autoscaling=autoscaling,
    )


def build_pdb(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, owner.child_name),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_of(owner)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",  # a crash-looping pod must not block node drains
        },
    }


HPA_REF = ("autoscaling/v2", "HorizontalPodAutoscaler")
SCALED_OBJECT_REF = ("keda.sh/v1alpha1", "ScaledObject")
PDB_REF = ("policy/v1", "PodDisruptionBudget")


def desired_children(
    owner: Owner,
    spec: ModelServiceSpec,
    model: ArtifactToServe,
    pool: NodePool,
    config: OperatorConfig,
    *,
    keda_installed: bool,
    replicas: int | None | EllipsisType = ...,
    http_add_on_installed: bool = False,
) -> Children:
    """Everything the ModelService should own now; optional kinds it should not own go to `delete`.

    A ScaledObject (HTTPScaledObject) is only deleted while KEDA's API (the HTTP add-on's) exists: without it
    there can be none. `replicas`: the Deployment's, when not the spec's (`deployment_replicas`): a canary's plan.
    """
    children = Children()
    if replicas is ...:
        replicas = deployment_replicas(spec, keda_installed, http_add_on_installed)
    children.apply.append(build_deployment(owner, spec, model, pool, config, replicas=replicas))
    children.apply.append(build_service(owner, tls=spec.tls is not None))
    name = owner.child_name
    if uses_hpa(spec):
        children.apply.append(build_hpa(owner, spec.autoscaling))
    else:
        children.delete.append(ChildRef(*HPA_REF, name))
    if uses_keda(spec, keda_installed, http_add_on_installed):
        children.apply.append(build_scaled_object(owner, spec.autoscaling, config.prometheus_address))
    elif keda_installed:
        children.delete.append(ChildRef(*SCALED_OBJECT_REF, name))
    if uses_http_add_on(spec, http_add_on_installed):
        children.apply.append(build_service_http_scaled_object(owner, spec.autoscaling, config.cluster_domain))
    elif http_add_on_installed:
        children.delete.append(ChildRef(*HTTP_SCALED_OBJECT_REF, name))
    if needs_disruption_budget(spec):
        children.apply.append(build_pdb(owner))
    else:
        children.delete.append(ChildRef(*PDB_REF, name))
    if uses_kubernetes_auth(spec):
        children.apply[:0] = build_auth_access(owner)  # before the Deployment: its pods name the ServiceAccount
    else:
        children.delete.extend(ChildRef(*kind, auth_account_name(owner)) for kind in AUTH_ACCESS_KINDS)
    return children


def generation_settings(generation: GenerationSpec | None) -> dict[str, Any]:
    """A decoder server's generation bounds; none when `spec.generation` is unset (the server's defaults)."""
    if generation is None:
        return {}
    return {
        "max_sequences": generation.max_sequences, "kv_cache_bytes": generation.kv_cache_bytes,
        "context_length": generation.context_length, "max_tokens": generation.max_tokens,  # None: not written
        "max_waiting": generation.max_waiting, "queue_timeout_s": generation.queue_timeout_seconds,
    }


# ---- payload logging and tracing ----------------------------------------------------------------------


def observability_settings(owner: Owner, spec: ModelServiceSpec) -> dict[str, Any]:
    """The server's payload log and tracing settings, and the ModelService they name; none when both are off."""
    logging, tracing = spec.payload_logging, spec.tracing
    if logging is None and tracing is None:
        return {}
    settings: dict[str, Any] = {"service_name": owner.name, "service_namespace": owner.namespace}
    if logging is not None:
        settings |= {"payload_log_url": logging.url, "payload_log_mode": logging.mode,
                     "payload_log_sample_rate": logging.sample_rate}
    if tracing is not None:
        settings |= {"tracing_endpoint": tracing.endpoint, "tracing_sample_rate": tracing.sample_rate}
    return settings
