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
from slimserve.api.uri import BUILTIN, CLAIM_NAME_MAX, CLAIM_NAME_PATTERN
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
    scale_down_delay_seconds: int | None = Field(
        default=None,
        ge=0,
        le=3600,
        description=(
            "Seconds the load must stay low before replicas are removed, e.g. 60: the HorizontalPodAutoscaler's "
            "scale-down stabilization window (KEDA's too), and with minReplicas 0 the wait before the last replica "
            "goes (KEDA's cooldownPeriod, the HTTP add-on's scaledownPeriod). Unset: the autoscalers' own, 300."
        ),
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


# The builtin:// models that generate text: of all model URIs, the only ones whose family is known before a pod
# loads them (a decoder's files, an artifact's manifest are read by the server).
BUILTIN_DECODERS = (f"{BUILTIN}://tiny-lm",)
MAX_CONTEXT_TOKENS = 1 << 20
OUTPUT_FITS_CONTEXT = "spec.generation.maxTokens must be below contextLength (a prompt takes a token at least)"
NOT_A_DECODER = (f"spec.generation: the model is not a decoder; generation settings apply to {', '.join(BUILTIN_DECODERS)} "
                 "and Hugging Face decoders or their artifacts")


class GenerationSpec(SpecModel):
    """Decoders: the generation engine's bounds in each server pod (continuous batching, the KV cache, the queue)."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.maxTokens) || !has(self.contextLength) || self.maxTokens < self.contextLength",
                    "message": OUTPUT_FITS_CONTEXT,
                    "fieldPath": ".maxTokens",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    }

    max_sequences: int = Field(
        default=DEFAULTS.max_sequences, ge=1, le=1024,
        description="Most sequences generated at once: the decode step's batch and the KV cache's slots, e.g. 32.",
    )
    kv_cache_bytes: int = Field(
        default=DEFAULTS.kv_cache_bytes, ge=0, le=1 << 40,
        description="The KV cache's memory bound in bytes, allocated once at start, e.g. 2147483648; fewer slots "
        "(or, below one, a shorter context) when maxSequences full-context sequences do not fit; 0: no bound "
        "but maxSequences. Requests that do not fit wait; memory never grows with the load.",
    )
    context_length: int | None = Field(
        default=None, ge=2, le=MAX_CONTEXT_TOKENS,
        description="Tokens a sequence may hold, prompt and output together, e.g. 2048; at most the model's own "
        "context (a server given more refuses to start, saying so); unset: the model's context.",
    )
    max_tokens: int | None = Field(
        default=None, ge=1, le=MAX_CONTEXT_TOKENS,
        description="Most tokens one request may generate, e.g. 512: a request asking for more is refused (400 "
        "naming its max_tokens), one asking for none gets at most this many; unset: the rest of the context.",
    )
    max_waiting: int = Field(
        default=DEFAULTS.max_waiting, ge=0, le=100_000,
        description="Most requests waiting for a free slot, e.g. 64; one more is refused at once (429 with Retry-After).",
    )
    queue_timeout_seconds: int = Field(
        default=int(DEFAULTS.queue_timeout_s), ge=1, le=3600,
        description="Longest a request waits for a slot, in seconds, e.g. 30; then it is refused (503 with Retry-After).",
    )

    @model_validator(mode="after")
    def _output_fits(self) -> "GenerationSpec":
        if self.max_tokens is not None and self.context_length is not None and self.max_tokens >= self.context_length:
            raise ValueError(OUTPUT_FITS_CONTEXT)
        return self


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


GATEWAY_API_GROUP = "gateway.networking.k8s.io"
CANARY_EQUALS_STABLE = "spec.canary.model: the candidate is the model spec.model already serves; name another uri or compressionJobRef"
CANARY_NEEDS_REPLICAS = ("spec.canary: a canary needs stable replicas to split traffic with; set spec.autoscaling.minReplicas "
                         "to 1 or more while it runs")
CANARY_FULL_NEEDS_GATEWAY = ("spec.canary.trafficPercent: 100 with spec.autoscaling needs spec.canary.gateway (the autoscaler "
                             "keeps stable replicas); promote by moving the candidate into spec.model instead")


class GatewayReference(SpecModel):
    """A Gateway API Gateway (an HTTPRoute parentRef) that routes the service's HTTP traffic by weight."""

    name: str = Field(pattern=SECRET_NAME_PATTERN, max_length=253, description="The Gateway's name, e.g. public.")
    namespace: str | None = Field(
        default=None, pattern=DNS_LABEL_PATTERN, max_length=63,
        description="The Gateway's namespace; unset: the ModelService's (the Gateway must allow routes from it).",
    )
    section_name: str | None = Field(
        default=None, pattern=DNS_LABEL_PATTERN, max_length=253,
        description="One listener of the Gateway, e.g. http; unset: every listener that accepts the route.",
    )


class CanaryRollbackSpec(SpecModel):
    """When the operator takes the canary's traffic away on its error rate (see CanarySpec.rollback): judged once
    minRequests arrived in the window, rolled back when more than maxErrorPercent of them failed."""

    max_error_percent: float = Field(
        ge=0.0, lt=100.0,
        description="Roll back when more than this percent of the canary's inference requests in the window "
        "failed, e.g. 5; 0 rolls back on the first failure.",
    )
    window_seconds: int = Field(
        default=60, ge=10, le=3600,
        description="Seconds of requests the error rate is measured over, e.g. 60; at least a few of Prometheus' "
        "scrape intervals (the canary's requests before its first scrape in the window are not seen).",
    )
    min_requests: int = Field(
        default=20, ge=1, le=1_000_000,
        description="Fewest canary requests in the window before the rate is judged at all, e.g. 20.",
    )


class CanarySpec(SpecModel):
    """A candidate model served beside spec.model, with a share of the traffic.

    Without a gateway the one Service selects the pods of both versions and the share is a replica proportion:
    stable runs round(total*(100-trafficPercent)/100) replicas and the canary the rest (at least 1 when
    trafficPercent > 0), of spec.replicas, or with spec.autoscaling of the stable replicas the autoscaler runs
    (the autoscaler scales the stable Deployment; the canary follows it). Limits: the share moves in steps of
    1/replicas (20% needs 5 replicas in all; 1 replica in all serves 0% or 100%); Service load balancing picks a
    pod per connection, not per request, so a client that keeps its connection alive stays on one version; with an
    autoscaler the share is exact only after the canary has followed the stable's scale. With a gateway, an
    HTTPRoute splits HTTP (REST) requests by weight whatever the replicas; gRPC still goes through the Service.
    Promote: trafficPercent 100, then move the candidate into spec.model and remove spec.canary. Roll back:
    trafficPercent 0, or remove spec.canary; or let the operator do it on the canary's error rate (rollback). The side gaining traffic is scaled up and Ready before the other is
    scaled down."""

    model: ModelReference = Field(description="The candidate model, as spec.model: a uri or a compressionJobRef.")
    traffic_percent: int = Field(
        ge=0, le=100,
        description="Share of the traffic the candidate receives, 0-100, e.g. 20 (see the limits of the replica "
        "proportion above).",
    )
    gateway: GatewayReference | None = Field(
        default=None,
        description="Split HTTP traffic with Gateway API HTTPRoute weights: an owned HTTPRoute attached to this "
        "Gateway, with a Service per version as its backends; unset: split by replica proportion on the Service.",
    )
    rollback: CanaryRollbackSpec | None = Field(
        default=None,
        description="Roll the canary's traffic back by itself when its error rate exceeds maxErrorPercent: the "
        "operator reads the canary pods' inference requests of the last windowSeconds from the Prometheus of its "
        "configuration (prometheusAddress, KEDA's too); REST 5xx and gRPC INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, "
        "UNKNOWN and DATA_LOSS are errors, 4xx and 429 are not. Rolled back, the canary gets no traffic, as with "
        "trafficPercent 0 (condition CanaryRolledBack, status.canary.rolledBack), the spec unchanged, until "
        "spec.canary's model or trafficPercent changes. Unset: only spec edits move the traffic.",
    )


REPLICAS_OF_AUTOSCALER = ("spec.replicas: the autoscaler sets the replicas of a ModelService with spec.autoscaling "
                          "(kubectl scale too); change spec.autoscaling.minReplicas/maxReplicas, or remove "
                          "spec.autoscaling to set replicas")


class ModelServiceSpec(SpecModel):
    """Desired inference service."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": f"!has(self.generation) || !has(self.model.uri) || !self.model.uri.startsWith('{BUILTIN}://') "
                    f"|| self.model.uri in {list(BUILTIN_DECODERS)}",
                    "message": NOT_A_DECODER,
                    "fieldPath": ".generation",
                    "reason": "FieldValueForbidden",
                },
                {
                    "rule": "!has(self.canary) || !((has(self.model.uri) && has(self.canary.model.uri) "
                    "&& self.model.uri == self.canary.model.uri) || (has(self.model.compressionJobRef) "
                    "&& has(self.canary.model.compressionJobRef) "
                    "&& self.model.compressionJobRef.name == self.canary.model.compressionJobRef.name))",
                    "message": CANARY_EQUALS_STABLE,
                    "fieldPath": ".canary.model",
                    "reason": "FieldValueDuplicate",
                },
                {
                    "rule": "!has(self.canary) || !has(self.autoscaling) || self.autoscaling.minReplicas > 0",
                    "message": CANARY_NEEDS_REPLICAS,
                    "fieldPath": ".canary",
                    "reason": "FieldValueForbidden",
                },
                {
                    "rule": "!has(self.canary) || !has(self.autoscaling) || has(self.canary.gateway) "
                    "|| self.canary.trafficPercent < 100",
                    "message": CANARY_FULL_NEEDS_GATEWAY,
                    "fieldPath": ".canary.trafficPercent",
                    "reason": "FieldValueForbidden",
                },
                {
                    # Also what refuses `kubectl scale` (a /scale write updates spec.replicas, and the whole
                    # object is validated): an autoscaler owns the replicas of an autoscaled service.
                    "rule": "!has(self.autoscaling) || !has(oldSelf.autoscaling) || self.replicas == oldSelf.replicas",
                    "message": REPLICAS_OF_AUTOSCALER,
                    "fieldPath": ".replicas",
                    "reason": "FieldValueForbidden",
                },
            ]
        }
    }

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
    replicas: int = Field(
        default=1, ge=0, le=1000,
        description="Replicas when autoscaling is not set, e.g. 2; also what `kubectl scale msvc NAME --replicas N` "
        "sets (refused while autoscaling is set).",
    )
    resources: ResourceRequirements | None = Field(default=None, description="Resources of each server pod.")
    autoscaling: AutoscalingSpec | None = Field(default=None, description="Autoscaling; unset means fixed replicas.")
    batching: BatchingSpec = Field(default_factory=BatchingSpec, json_schema_extra={"default": {}}, description="Dynamic batching of requests.")
    generation: GenerationSpec | None = Field(
        default=None,
        description="Decoders (text generation): sequences at once, the KV cache's memory bound, context and output "
        "limits, the wait queue; unset: the server's defaults.",
    )
    protocols: ProtocolsSpec = Field(default_factory=ProtocolsSpec, json_schema_extra={"default": {}}, description="Extra endpoints.")
    s3: S3Spec | None = Field(default=None, description="Object-store access for an s3:// model URI.")
    model_cache: ModelCacheSpec | None = Field(
        default=None,
        description=(
            "A shared volume for http(s):// and hf:// downloads, so that replicas download the model once; "
            "unset: the node pool's cache claim if the operator's configuration gives the pool one, else each pod "
            "downloads into its own cache. A claim that does not exist holds the rollout (ModelCacheClaimMissing)."
        ),
    )
    payload_logging: PayloadLoggingSpec | None = Field(
        default=None, description="Send inference payloads as CloudEvents to a sink; unset: off."
    )
    tracing: TracingSpec | None = Field(default=None, description="Export OpenTelemetry traces; unset: off.")
    tls: TlsSpec | None = Field(default=None, description="Serve over TLS from a Secret; unset: plain text.")
    auth: AuthSpec | None = Field(default=None, description="Who may call the service; unset: anyone who can reach it.")
    canary: CanarySpec | None = Field(
        default=None,
        description="A candidate model beside spec.model with a share of the traffic (canary rollout); unset: none.",
    )

    @model_validator(mode="after")
    def _generation_needs_a_decoder(self) -> "ModelServiceSpec":
        uri = self.model.uri or ""
        if self.generation is not None and uri.startswith(f"{BUILTIN}://") and uri not in BUILTIN_DECODERS:
            raise ValueError(NOT_A_DECODER)
        return self

    @model_validator(mode="after")
    def _canary_rules(self) -> "ModelServiceSpec":
        canary = self.canary
        if canary is None:
            return self
        same_uri = self.model.uri is not None and self.model.uri == canary.model.uri
        stable_job, canary_job = self.model.compression_job_ref, canary.model.compression_job_ref
        if same_uri or (stable_job is not None and canary_job is not None and stable_job.name == canary_job.name):
            raise ValueError(CANARY_EQUALS_STABLE)
        if self.autoscaling is not None and self.autoscaling.min_replicas == 0:
            raise ValueError(CANARY_NEEDS_REPLICAS)
        if self.autoscaling is not None and canary.gateway is None and canary.traffic_percent == 100:
            raise ValueError(CANARY_FULL_NEEDS_GATEWAY)
        return self


class CanaryRollback(StatusModel):
    """A rollback the operator made: it holds while spec.canary names the same candidate at the same trafficPercent."""

    model_uri: str | None = Field(default=None, description="The candidate's artifact that was rolled back.")
    model_digest: str | None = Field(default=None, description="Its digest.")
    traffic_percent: int | None = Field(default=None, description="spec.canary.trafficPercent when it was rolled back.")
    error_percent: float | None = Field(default=None, description="The error rate measured, percent of its requests.")
    requests: float | None = Field(default=None, description="The canary's inference requests in the window.")
    window_seconds: int | None = Field(default=None, description="The window they were counted over.")
    time: str | None = Field(default=None, description="When it was rolled back (RFC 3339).")


class CanaryStatus(StatusModel):
    """The candidate beside the stable model, and the traffic split now."""

    model_uri: str | None = Field(default=None, description="The candidate's artifact.")
    model_digest: str | None = Field(default=None, description="Digest of the candidate's artifact.")
    replicas: int | None = Field(default=None, description="Pods of the canary Deployment.")
    ready_replicas: int | None = Field(default=None, description="Ready canary pods.")
    stable_replicas: int | None = Field(default=None, description="Replicas the stable Deployment is asked for now.")
    traffic_percent: int | None = Field(
        default=None,
        description="Share of the traffic the candidate gets now: the HTTPRoute's weight with a gateway, else its "
        "share of the ready pods behind the Service.",
    )
    message: str | None = Field(default=None, description="Why the split is not yet the one asked for, if it is not.")
    rolled_back: CanaryRollback | None = Field(
        default=None,
        description="Set while the operator holds the canary's traffic at 0 after its error rate exceeded "
        "spec.canary.rollback.maxErrorPercent: what was rolled back and what was measured.",
    )


class ModelServiceStatus(StatusModel):
    observed_generation: int | None = Field(default=None, description="The generation this status describes.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready summarises the service; also ModelAvailable.")
    url: str | None = Field(
        default=None,
        description="In-cluster REST URL, e.g. http://NAME.NAMESPACE.svc.cluster.local:8080; with minReplicas 0 "
        "through the KEDA HTTP add-on, its interceptor's, which requests reach with the Host header hostHeader.",
    )
    host_header: str | None = Field(
        default=None,
        description="The Host header requests to url carry when it is the KEDA HTTP add-on's interceptor (it routes "
        "by Host and wakes the service from zero); unset otherwise.",
    )
    grpc_address: str | None = Field(default=None, description="In-cluster gRPC address, host:port.")
    replicas: int | None = Field(default=None, description="Pods of the current Deployment.")
    selector: str | None = Field(
        default=None,
        description="Label selector of the server pods, e.g. app.kubernetes.io/instance=NAME,...: the scale "
        "subresource's (kubectl scale, an HPA aimed at the ModelService); while spec.canary is set, of the stable "
        "pods only (slimserve.io/model-version=stable).",
    )
    ready_replicas: int | None = Field(default=None, description="Ready pods.")
    model_uri: str | None = Field(default=None, description="The artifact being served.")
    model_digest: str | None = Field(default=None, description="Digest of the artifact being served.")
    canary: CanaryStatus | None = Field(default=None, description="The canary, while spec.canary is set.")


class ModelService(SpecModel, ResourceKind):
    """A whole ModelService manifest."""

    kind: ClassVar[str] = "ModelService"
    plural: ClassVar[str] = "modelservices"
    singular: ClassVar[str] = "modelservice"
    short_names: ClassVar[list[str]] = ["msvc"]
    # The scale subresource: `kubectl scale msvc NAME --replicas N` sets spec.replicas.
    scale: ClassVar[dict[str, str]] = {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
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
