"""Operator configuration: images, node pools and cluster facts, from a YAML file the Helm chart mounts.

The file is read once at start (`SLIMSERVE_OPERATOR_CONFIG`, default below); every handler gets the same
`OperatorConfig`. Node pools are configuration, not code: the chart's `nodePools` value becomes `nodePools` here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from slimserve.api.common import ResourceRequirements
from slimserve.api.uri import CLAIM_NAME_MAX, CLAIM_NAME_PATTERN
from slimserve.api.workload import DEFAULTS, OperatorEnv

CONFIG_ENV = OperatorEnv.variable("config").name
DEFAULT_CONFIG_PATH = Path("/etc/slimserve/operator.yaml")


class _ConfigModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Image(_ConfigModel):
    repository: str
    tag: str
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"

    @property
    def reference(self) -> str:
        separator = "@" if self.tag.startswith("sha256:") else ":"
        return f"{self.repository}{separator}{self.tag}"


class Images(_ConfigModel):
    compressor: Image = Image(repository="ghcr.io/slimserve/compressor", tag="0.1.0")
    server: Image = Image(repository="ghcr.io/slimserve/server", tag="0.1.0")
    # GPU pools run the CUDA builds of the same images.
    compressor_gpu: Image = Image(repository="ghcr.io/slimserve/compressor", tag="0.1.0-cuda")
    server_gpu: Image = Image(repository="ghcr.io/slimserve/server", tag="0.1.0-cuda")


class PoolModelCache(_ConfigModel):
    """A download cache the server pods of a pool share: the claim of this name in each ModelService's namespace."""

    claim_name: str = Field(pattern=CLAIM_NAME_PATTERN, max_length=CLAIM_NAME_MAX)


class NodePool(_ConfigModel):
    """Where a pool's pods go and what they may ask for."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    # Extended resource a pod of this pool requests (e.g. nvidia.com/gpu); None for CPU pools.
    gpu_resource_name: str | None = None
    gpus_per_pod: int = Field(default=1, ge=1)
    # Mounted by the pool's ModelServices that set no spec.modelCache; a namespace without the claim is refused.
    model_cache: PoolModelCache | None = None

    @property
    def has_gpu(self) -> bool:
        return self.gpu_resource_name is not None


def _default_pools() -> dict[str, NodePool]:
    return {
        "cpu": NodePool(node_selector={"slimserve.io/pool": "cpu"}),
        "gpu": NodePool(
            node_selector={"slimserve.io/pool": "gpu"},
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            gpu_resource_name="nvidia.com/gpu",
        ),
    }


def _default_compressor_resources() -> ResourceRequirements:
    # Requests equal to limits: a Guaranteed pod, the last to be evicted, its speed figures measured on CPUs
    # it is sure to have.
    guaranteed = {"cpu": "2", "memory": "4Gi"}
    return ResourceRequirements(requests=guaranteed, limits=dict(guaranteed))


class Profile(_ConfigModel):
    """A seccomp or AppArmor profile."""

    type: Literal["RuntimeDefault", "Localhost", "Unconfined"]
    localhost_profile: str | None = None


class SELinuxOptions(_ConfigModel):
    user: str | None = None
    role: str | None = None
    type: str | None = None
    level: str | None = None


NON_ROOT_ID = 65532  # "nonroot" of distroless images


class PodSecurityContext(_ConfigModel):
    """The security context of the compression and server pods. Never root; the fixed ids may be left unset
    (None) where the platform assigns them, as OpenShift's restricted SCC does from the namespace's range."""

    run_as_non_root: Literal[True] = True
    run_as_user: int | None = Field(default=NON_ROOT_ID, ge=1)
    run_as_group: int | None = Field(default=NON_ROOT_ID, ge=0)
    fs_group: int | None = Field(default=NON_ROOT_ID, ge=0)
    fs_group_change_policy: Literal["OnRootMismatch", "Always"] | None = None
    supplemental_groups: list[int] | None = None
    seccomp_profile: Profile | None = Profile(type="RuntimeDefault")
    app_armor_profile: Profile | None = None
    se_linux_options: SELinuxOptions | None = None

    def to_manifest(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class OperatorConfig(_ConfigModel):
    images: Images = Field(default_factory=Images)
    node_pools: dict[str, NodePool] = Field(default_factory=_default_pools)
    # Where the compression and server pods mount a PVC named in a pvc:// URI.
    pvc_mount_root: str = DEFAULTS.pvc_root
    cluster_domain: str = "cluster.local"
    # Prometheus that scrapes the server pods; KEDA's concurrency trigger and the canary rollback query it.
    prometheus_address: str = "http://prometheus-operated.monitoring.svc:9090"
    # The KEDA HTTP add-on's interceptor proxy (its chart's Service in its namespace): where REST clients of a
    # service that scales from zero send their requests, with the service's host in the Host header.
    http_interceptor_address: str = Field(
        default="http://keda-add-ons-http-interceptor-proxy.keda.svc:8080", pattern=r"^https?://[^/\s]+/?$"
    )
    image_pull_secrets: list[str] = Field(default_factory=list)
    # CPU and memory of a compression pod whose CompressionJob names neither (per resource).
    compressor_resources: ResourceRequirements = Field(default_factory=_default_compressor_resources)
    # The pod security context of compression and server pods (their containers' contexts are fixed).
    pod_security_context: PodSecurityContext = Field(default_factory=PodSecurityContext)
    # Log format of compression and server pods; json sets SLIMSERVE_LOG_FORMAT=json on them, text (their
    # default) sets nothing, so that pod templates stay as they were.
    log_format: Literal["text", "json"] = DEFAULTS.log_format
    # The Hugging Face Hub mirror hf:// sources are read from in compression, batch and server pods (HF_ENDPOINT);
    # unset, the public Hub.
    hub_endpoint: str | None = Field(default=None, pattern=r"^https?://[^/\s]+\S*$")

    def node_pool(self, name: str) -> NodePool:
        """The pool, or a KeyError whose message lists the known pools."""
        try:
            return self.node_pools[name]
        except KeyError:
            known = ", ".join(sorted(self.node_pools)) or "none"
            raise KeyError(f"unknown node pool {name!r} (known: {known})") from None


def load_config(path: str | os.PathLike[str] | None = None) -> OperatorConfig:
    """Read the configuration file; defaults when it does not exist (local runs, tests)."""
    path = Path(path or OperatorEnv.from_env(only=["config"]).config or DEFAULT_CONFIG_PATH)
    if not path.exists():
        return OperatorConfig()
    data = yaml.safe_load(path.read_text()) or {}
    return OperatorConfig.model_validate(data)
