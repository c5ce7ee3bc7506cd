"""The ModelService resource: an autoscaled Open Inference Protocol service of one model."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, StringConstraints, model_validator

from slimserve.api.common import (
    API_VERSION,
    DNS_LABEL_PATTERN,
    MODEL_URI_PATTERN,
    Condition,
    HfTokenSecret,
    LocalObjectReference,
    ResourceKind,
    ResourceRequirements,
    SpecModel,
    StatusModel,
)
from slimserve.api.compression_job import DEFAULT_NODE_POOL
from slimserve.api.storage import S3Spec
from slimserve.api.uri import CLAIM_NAME_MAX, CLAIM_NAME_PATTERN
from slimserve.api.workload import TLS_CA_FILE, TLS_CERT_FILE, TLS_CLIENT_AUTH_MODES, TLS_KEY_FILE
from slimserve.api.workload import PAYLOAD_LOG_MODES
from slimserve.api.workload import AUTH_API_KEYS, AUTH_KUBERNETES, CORS_ORIGIN_PATTERN, DEFAULTS


class ModelReference(SpecModel):
    """The model to serve: an artifact URI, or the artifact of a CompressionJob in the same namespace."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.uri) != has(self.compressionJobRef)",
                    "message": "spec.model: set exactly one of uri and compressionJobRef",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    }

    uri: str | None = Field(
        default=None,
        pattern=MODEL_URI_PATTERN,
        max_length=2048,
        description=(
            "A SlimServe artifact (file://, pvc://CLAIM/path, s3://; or an archive of one at http(s)://HOST/path, "
            "?sha256=HEX pinning its bytes; or hf://ORG/NAME[@REVISION]) or a builtin:// demo model."
        ),
    )
    hf_token_secret: HfTokenSecret = None
    compression_job_ref: LocalObjectReference | None = Field(
        default=None, description="Serve the artifact of this CompressionJob once it has succeeded."
    )
    allow_outside_budget: bool = Field(
        default=False,
        description=(
            "Use an artifact marked withinBudget: false (a CompressionJob with evaluation.onBudgetMiss: keepBest "
            "that missed its accuracy budget). Unset, servers and batch pods refuse to load it, and a ModelService's "
            "compressionJobRef to such a job leaves ModelAvailable False (OutsideBudget)."
        ),
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> "ModelReference":
        if (self.uri is None) == (self.compression_job_ref is None):
            raise ValueError("spec.model: set exactly one of uri and compressionJobRef")
        return self


class ModelCacheSpec(SpecModel):
    """Where the server pods keep what they download."""

    claim_name: str = Field(
        pattern=CLAIM_NAME_PATTERN,
        max_length=CLAIM_NAME_MAX,
        description="A PersistentVolumeClaim (ReadWriteMany across nodes) mounted read-write into every replica.",
    )


class AutoscalingSpec(SpecModel):
    """Replica range and the signal that scales within it."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "message": "spec.autoscaling.minReplicas must not exceed maxReplicas",
                    "fieldPath": ".minReplicas",
                    "reason": "FieldValueInvalid",
                },
                {
                    "rule": "self.minReplicas > 0 || self.metric == 'concurrency'",
                    "message": "spec.autoscaling.minReplicas: scale to zero needs metric concurrency (KEDA)",
                    "fieldPath": ".minReplicas",
                    "reason": "FieldValueInvalid",
                },
            ]
        }
    }

    min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest replicas, e.g. 1 (0 with metric concurrency).")
    max_replicas: int = Field(default=4, ge=1, le=1000, description="Most replicas, e.g. 8.")
    metric: Literal["cpu", "concurrency"] = Field(
        default="cpu",
        description="cpu: HorizontalPodAutoscaler on CPU utilisation; concurrency: KEDA on in-flight requests per replica.",
    )
    target: int = Field(
        default=70,
        ge=1,
        le=10000,
        description="Target per replica: CPU utilisation percent (cpu), or in-flight requests (concurrency), e.g. 70.",
    )

    @model_validator(mode="after")
    def _range(self) -> "AutoscalingSpec":
        if self.min_replicas > self.max_replicas:
            raise ValueError("spec.autoscaling.minReplicas must not exceed maxReplicas")
        if self.min_replicas == 0 and self.metric != "concurrency":
            raise ValueError("spec.autoscaling.minReplicas: scale to zero needs metric concurrency (KEDA)")
        return self


class BatchingSpec(SpecModel):
    """Dynamic batching: requests arriving close together run as one batch."""

    enabled: bool = Field(default=DEFAULTS.batching, description="Batch concurrent requests together.")
    max_batch_size: int = Field(default=DEFAULTS.max_batch_size, ge=1, le=1024, description="Largest batch, e.g. 32.")
    max_latency_ms: float = Field(
        default=DEFAULTS.max_latency_ms,
        ge=0.0,
        le=1000.0,
        description="Longest a request waits for a batch to fill, milliseconds, e.g. 5.",
    )


CorsOrigin = Annotated[str, StringConstraints(pattern=CORS_ORIGIN_PATTERN, max_length=253)]


class ProtocolsSpec(SpecModel):
    """Which endpoints the server exposes besides Open Inference Protocol REST and gRPC."""

    grpc_web: bool = Field(default=DEFAULTS.grpc_web, description="Answer gRPC-Web (for browsers) on the HTTP port.")
    playground: bool = Field(
        default=DEFAULTS.playground, description="Serve a small model playground page at / (turns gRPC-Web on)."
    )
    cors_origins: list[CorsOrigin] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"default": []},
        description="Origins whose pages may call the service from a browser (REST and gRPC-Web), "
        "e.g. [\"https://app.example.com\"], or [\"*\"] for any; empty keeps CORS closed.",
    )


class KubernetesAuthSpec(SpecModel):
    """The right a caller's token needs: `verb` on this ModelService (modelservices[/subresource] NAME)."""

    verb: str = Field(
        default=DEFAULTS.auth_verb, pattern=r"^[a-z]+$", max_length=63,
        description="Verb a caller needs on the ModelService, e.g. get (RBAC: a Role with get on modelservices).",
    )
    subresource: str | None = Field(
        default=None, pattern=DNS_LABEL_PATTERN, max_length=63,
        description="Subresource of modelservices the verb is checked on, e.g. infer; unset: the resource itself.",
    )
    audiences: list[Annotated[str, StringConstraints(min_length=1, max_length=253)]] = Field(
        default_factory=list, max_length=8, json_schema_extra={"default": []},
        description="Audiences a token must be issued for, e.g. [\"slimserve\"]; empty: the API server's own.",
    )


class AuthSpec(SpecModel):
    """Who may call the service. Health (/v2/health/*, gRPC health) and /metrics stay open to probes."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.mode != 'apiKeys' || has(self.apiKeysSecret)",
                    "message": "spec.auth.apiKeysSecret: mode apiKeys needs the Secret of key hashes",
                    "fieldPath": ".apiKeysSecret",
                    "reason": "FieldValueRequired",
                }
            ]
        }
    }

    mode: Literal["apiKeys", "kubernetes"] = Field(
        description="apiKeys: a key from the Secret (Authorization: Bearer KEY, X-API-Key, gRPC authorization "
        "metadata); kubernetes: a bearer token the API server accepts (TokenReview) whose user may use the "
        "ModelService (SubjectAccessReview)."
    )
    api_keys_secret: LocalObjectReference | None = Field(
        default=None,
        description="apiKeys: Secret with one entry per key, named after it (e.g. alice), whose value is "
        "sha256:<64 hex digits>, the SHA-256 of the key; deleting an entry revokes that key.",
    )
    kubernetes: KubernetesAuthSpec = Field(
        default_factory=KubernetesAuthSpec, json_schema_extra={"default": {}},
        description="kubernetes: the right a caller needs, and the audiences of its token.",
    )

    @model_validator(mode="after")
    def _secret_for_keys(self) -> "AuthSpec":
        if self.mode == AUTH_API_KEYS and self.api_keys_secret is None:
            raise ValueError("spec.auth.apiKeysSecret: mode apiKeys needs the Secret of key hashes")
        return self

    @property
    def uses_kubernetes(self) -> bool:
        return self.mode == AUTH_KUBERNETES


# A Secret's name: a DNS subdomain.
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class TlsSpec(SpecModel):
    """TLS on every endpoint (REST, gRPC, gRPC-Web) from a Secret, reloaded when the Secret changes."""

    secret_name: str = Field(
        pattern=SECRET_NAME_PATTERN,
        max_length=253,
        description=f"Secret in the ModelService's namespace with the server's certificate chain ({TLS_CERT_FILE}) "
        f"and key ({TLS_KEY_FILE}), as in a kubernetes.io/tls Secret or one cert-manager writes; with clientAuth, "
        f"also {TLS_CA_FILE}, the CA that signs client certificates.",
    )
    client_auth: Literal[TLS_CLIENT_AUTH_MODES] = Field(
        default=DEFAULTS.tls_client_auth,
        description=f"Client certificates (mTLS), verified against {TLS_CA_FILE}: none; optional (a certificate "
        "presented on the HTTP port is verified; gRPC does not ask); require (on both ports: then the probes and "
        "Prometheus use a plain port that serves only health and /metrics).",
    )


class PayloadLoggingSpec(SpecModel):
    """Inference requests and responses as CloudEvents, in KServe's logger format, to an HTTP sink."""

    url: str = Field(
        pattern=r"^https?://[^\s/?#]+(/[^\s]*)?$", max_length=2048,
        description="Sink the events are POSTed to, e.g. http://message-dumper.default.svc.cluster.local.",
    )
    mode: Literal[PAYLOAD_LOG_MODES] = Field(
        default=DEFAULTS.payload_log_mode,
        description="all: requests and responses; request or response: only those.",
    )
    sample_rate: float = Field(
        default=DEFAULTS.payload_log_sample_rate, gt=0.0, le=1.0,
        description="Share of requests logged, chosen by request id (a request and its response together), e.g. 0.1.",
    )


class TracingSpec(SpecModel):
    """OpenTelemetry traces of inference requests, exported over OTLP/gRPC."""

    endpoint: str = Field(
        pattern=r"^https?://[^\s/?#]+/?$", max_length=2048,
        description="OTLP/gRPC endpoint of a collector, e.g. http://otel-collector.observability:4317 "
        "(http:// is plain text).",
    )
    sample_rate: float = Field(
        default=DEFAULTS.tracing_sample_rate, ge=0.0, le=1.0,
        description="Share of new traces sampled, e.g. 0.1; a caller's traceparent decides for its own requests.",
    )


class ModelServiceSpec(SpecModel):
    """Desired inference service."""

    model: ModelReference = Field(description="The model to serve.")
    model_name: str | None = Field(
        default=None,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="Model name in the inference protocol's paths; defaults to the ModelService's name.",
    )
    node_pool: str = Field(
        default=DEFAULT_NODE_POOL,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="Node pool of the server pods, as named in the operator's configuration, e.g. cpu or gpu.",
    )
    replicas: int = Field(default=1, ge=0, le=1000, description="Replicas when autoscaling is not set, e.g. 2.")
    resources: ResourceRequirements | None = Field(default=None, description="Resources of each server pod.")
    autoscaling: AutoscalingSpec | None = Field(default=None, description="Autoscaling; unset means fixed replicas.")
    batching: BatchingSpec = Field(default_factory=BatchingSpec, json_schema_extra={"default": {}}, description="Dynamic batching of requests.")
    protocols: ProtocolsSpec = Field(default_factory=ProtocolsSpec, json_schema_extra={"default": {}}, description="Extra endpoints.")
    s3: S3Spec | None = Field(default=None, description="Object-store access for an s3:// model URI.")
    model_cache: ModelCacheSpec | None = Field(
        default=None,
        description=(
            "A shared volume for http(s):// and hf:// downloads, so that replicas download the model once; "
            "unset: each pod downloads into its own cache."
        ),
    )
    payload_logging: PayloadLoggingSpec | None = Field(
        default=None, description="Send inference payloads as CloudEvents to a sink; unset: off."
    )
    tracing: TracingSpec | None = Field(default=None, description="Export OpenTelemetry traces; unset: off.")
    tls: TlsSpec | None = Field(default=None, description="Serve over TLS from a Secret; unset: plain text.")
    auth: AuthSpec | None = Field(default=None, description="Who may call the service; unset: anyone who can reach it.")


class ModelServiceStatus(StatusModel):
    observed_generation: int | None = Field(default=None, description="The generation this status describes.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready summarises the service; also ModelAvailable.")
    url: str | None = Field(default=None, description="In-cluster REST URL, e.g. http://NAME.NAMESPACE.svc.cluster.local:8080.")
    grpc_address: str | None = Field(default=None, description="In-cluster gRPC address, host:port.")
    replicas: int | None = Field(default=None, description="Pods of the current Deployment.")
    ready_replicas: int | None = Field(default=None, description="Ready pods.")
    model_uri: str | None = Field(default=None, description="The artifact being served.")
    model_digest: str | None = Field(default=None, description="Digest of the artifact being served.")


class ModelService(SpecModel, ResourceKind):
    """A whole ModelService manifest."""

    kind: ClassVar[str] = "ModelService"
    plural: ClassVar[str] = "modelservices"
    singular: ClassVar[str] = "modelservice"
    short_names: ClassVar[list[str]] = ["msvc"]
    description: ClassVar[str] = (
        "ModelService serves one model over the Open Inference Protocol (REST and gRPC) from an autoscaled "
        "Deployment on a CPU or GPU node pool."
    )

    model_config = {"extra": "ignore"}

    api_version: Literal["slimserve.io/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind_: Literal["ModelService"] = Field(default="ModelService", alias="kind")
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelServiceSpec
    status: ModelServiceStatus | None = None
