"""Settings of one server process (what `slimserve serve` flags and SLIMSERVE_* variables set)."""

from __future__ import annotations

from dataclasses import dataclass

from slimserve.api.workload import DEFAULTS, GRPC_HTTP2_BACKENDS
from slimserve.serving.auth_options import AuthConfig
from slimserve.serving.generation.options import GenerationOptions
from slimserve.serving.observability import PayloadLogSettings, TracingSettings
from slimserve.serving.tls import TlsOptions
from slimserve.serving.web.options import WebOptions


@dataclass(frozen=True)
class ServerConfig:
    artifact: str
    artifact_digest: str | None = None  # "sha256:...": refuse an artifact whose manifest digest differs
    model_name: str | None = None  # name in the protocol's paths; defaults to the model's own name
    model_version: str | None = None  # stable or canary (a ModelService's canary): slimserve_model_info's label
    host: str = DEFAULTS.host
    http_port: int = DEFAULTS.http_port
    grpc_port: int = DEFAULTS.grpc_port
    metrics_port: int | None = None  # /metrics on a port of its own as well (it is always on the HTTP port)
    batching: bool = DEFAULTS.batching
    max_batch_size: int = DEFAULTS.max_batch_size
    max_latency_ms: float = DEFAULTS.max_latency_ms
    max_body_bytes: int = DEFAULTS.max_body_bytes
    header_timeout_s: float = DEFAULTS.header_timeout_s  # longest wait for a request's headers (gRPC: HTTP/2 start)
    body_timeout_s: float = DEFAULTS.body_timeout_s  # longest wait for a body after its headers (gRPC: the message)
    drain_timeout_s: float = DEFAULTS.drain_timeout_s  # longest wait for in-flight requests after SIGTERM
    shutdown_delay_s: float = DEFAULTS.shutdown_delay_s  # keep serving (reporting not ready) this long after SIGTERM
    torch_threads: int = DEFAULTS.torch_threads  # 0: follow the container's CPU limit
    access_log: bool = DEFAULTS.access_log  # one JSON line per request on stdout
    device: str = DEFAULTS.device  # auto, cpu, cuda or cuda:N (slimserve.models.device)
    cuda_graphs: bool = DEFAULTS.cuda_graphs  # replay recorded CUDA graphs (on a GPU only)
    grpc_http2: str = DEFAULTS.grpc_http2  # the gRPC port's HTTP/2 implementation (serving.http2)
    allow_outside_budget: bool = DEFAULTS.allow_outside_budget  # load an artifact marked withinBudget: false
    warmup_batch_sizes: tuple[int, ...] = (1,)
    web: WebOptions = WebOptions()  # gRPC-Web, CORS, playground page (all off)
    payload_log: PayloadLogSettings | None = None  # inference payloads as CloudEvents to a sink (off)
    tracing: TracingSettings | None = None  # OpenTelemetry traces to a collector (off)
    auth: AuthConfig = AuthConfig()  # who may call (off)
    tls: TlsOptions = TlsOptions()  # plain text unless a directory of certificates is given
    probe_port: int | None = None  # health and /metrics only, in plain HTTP (for probes under client-certificate TLS)
    generation: GenerationOptions = GenerationOptions()  # decoders: KV cache bound, slots, queue

    def __post_init__(self) -> None:
        checks = {
            "artifact": bool(self.artifact),
            "http_port": 0 <= self.http_port <= 65535,
            "grpc_port": 0 <= self.grpc_port <= 65535,
            "metrics_port": self.metrics_port is None or 0 <= self.metrics_port <= 65535,
            "probe_port": self.probe_port is None or 0 <= self.probe_port <= 65535,
            "max_batch_size": self.max_batch_size >= 1,
            "max_latency_ms": self.max_latency_ms >= 0,
            "max_body_bytes": self.max_body_bytes >= 1024,
            "header_timeout_s": self.header_timeout_s > 0,
            "body_timeout_s": self.body_timeout_s > 0,
            "drain_timeout_s": self.drain_timeout_s >= 0,
            "shutdown_delay_s": self.shutdown_delay_s >= 0,
            "torch_threads": self.torch_threads >= 0,
            "grpc_http2": self.grpc_http2 in GRPC_HTTP2_BACKENDS,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}: invalid value {getattr(self, name)!r}")
