"""Settings of one server process (what `slimserve serve` flags and SLIMSERVE_* variables set)."""

from __future__ import annotations

from dataclasses import dataclass

from slimserve.serving.http_timeouts import DEFAULT_BODY_TIMEOUT_S, DEFAULT_HEADER_TIMEOUT_S
from slimserve.serving.rest import DEFAULT_MAX_BODY_BYTES
from slimserve.serving.web.options import WebOptions


@dataclass(frozen=True)
class ServerConfig:
    artifact: str
    artifact_digest: str | None = None  # "sha256:...": refuse an artifact whose manifest digest differs
    model_name: str | None = None  # name in the protocol's paths; defaults to the model's own name
    host: str = "0.0.0.0"
    http_port: int = 8080
    grpc_port: int = 9000
    metrics_port: int | None = None  # /metrics on a port of its own as well (it is always on the HTTP port)
    batching: bool = True
    max_batch_size: int = 32
    max_latency_ms: float = 5.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S  # HTTP: longest wait for a request's headers
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S  # HTTP: longest wait for a body after its headers
    drain_timeout_s: float = 20.0  # longest wait for in-flight requests after SIGTERM
    shutdown_delay_s: float = 0.0  # keep serving (reporting not ready) this long after SIGTERM
    torch_threads: int = 0  # 0: follow the container's CPU limit
    warmup_batch_sizes: tuple[int, ...] = (1,)
    web: WebOptions = WebOptions()  # gRPC-Web, CORS, playground page (all off)

    def __post_init__(self) -> None:
        checks = {
            "artifact": bool(self.artifact),
            "http_port": 0 <= self.http_port <= 65535,
            "grpc_port": 0 <= self.grpc_port <= 65535,
            "metrics_port": self.metrics_port is None or 0 <= self.metrics_port <= 65535,
            "max_batch_size": self.max_batch_size >= 1,
            "max_latency_ms": self.max_latency_ms >= 0,
            "max_body_bytes": self.max_body_bytes >= 1024,
            "header_timeout_s": self.header_timeout_s > 0,
            "body_timeout_s": self.body_timeout_s > 0,
            "drain_timeout_s": self.drain_timeout_s >= 0,
            "shutdown_delay_s": self.shutdown_delay_s >= 0,
            "torch_threads": self.torch_threads >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}: invalid value {getattr(self, name)!r}")
