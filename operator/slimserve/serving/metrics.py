"""Prometheus metrics of one server, in a registry of its own (several servers can live in one process).

Names (the operator and dashboards depend on them):
- slimserve_requests_total{protocol, endpoint, code}: every API call; code is the HTTP status (rest)
  or the gRPC status name (grpc, grpc-web)
- slimserve_request_duration_seconds{protocol}: inference latency, complete request to response
- slimserve_inflight_requests: complete inference requests inside the server now (the autoscaling signal)
- slimserve_queue_depth: requests waiting for the model in the batch queue
- slimserve_batch_size: rows per model call
- slimserve_model_forward_seconds: duration of each model call
- slimserve_model_ready: 1 once the model is loaded and warmed up
- slimserve_gpu_memory_allocated_bytes{device}, slimserve_gpu_memory_reserved_bytes{device}: the CUDA
  allocator's memory, read at each scrape; only a server whose model runs on a GPU has them
- slimserve_payload_log_events_total{outcome}: payload log events sent, dropped (queue full) or failed (sink)
- slimserve_model_info{model_version}: always 1; model_version is stable or canary in a ModelService's
  pods (empty elsewhere). An info series rather than a label on every series, as Prometheus' own *_info
  series are: a canary promoted or rolled back changes one series, and queries join it where they split by
  version: `sum by (model_version) (rate(slimserve_requests_total[5m]) * on (pod) group_left (model_version)
  slimserve_model_info)`

A server of a decoder model also has (`GenerationMetrics`):
- slimserve_time_to_first_token_seconds, slimserve_inter_token_latency_seconds: per sequence, from its arrival
  to its first token, and between its tokens
- slimserve_generated_tokens_total, slimserve_prompt_tokens_total: tokens/s is the rate of the first
- slimserve_running_sequences, slimserve_waiting_sequences: in the decode batch, and queued for a slot
- slimserve_kv_cache_used_tokens, slimserve_kv_cache_capacity_tokens: the KV cache's use and its bound
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

INFLIGHT_METRIC = "slimserve_inflight_requests"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "slimserve_requests", "API calls by protocol, endpoint and status code.",
            ("protocol", "endpoint", "code"), registry=r,
        )
        self.request_seconds = Histogram(
            "slimserve_request_duration_seconds", "Inference latency from a complete request to its response.",
            ("protocol",), buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.inflight = Gauge(INFLIGHT_METRIC, "Inference requests being served now.", registry=r)
        self.queue_depth = Gauge("slimserve_queue_depth", "Requests waiting in the batch queue.", registry=r)
        self.batch_size = Histogram("slimserve_batch_size", "Rows per model call.", buckets=_BATCH_BUCKETS, registry=r)
        self.forward_seconds = Histogram(
            "slimserve_model_forward_seconds", "Duration of one model call.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.model_ready = Gauge("slimserve_model_ready", "1 when the model is loaded and warmed up.", registry=r)
        self.payload_log_events = Counter(
            "slimserve_payload_log_events", "Payload log events by outcome: sent, dropped (queue full), failed (sink).",
            ("outcome",), registry=r,
        )

    def add_generation(self) -> "GenerationMetrics":
        """Register the metrics of a decoder's generation engine."""
        return GenerationMetrics(self.registry)

    def watch_gpu_memory(self, device) -> None:
        """Register the GPU memory gauges of `device` (a CUDA torch.device), read at each scrape."""
        from slimserve.models.device import gpu_memory_bytes

        for index, what in enumerate(("allocated", "reserved")):
            gauge = Gauge(
                f"slimserve_gpu_memory_{what}_bytes", f"GPU memory {what} by the CUDA caching allocator.",
                ("device",), registry=self.registry,
            )
            gauge.labels(str(device)).set_function(lambda index=index: gpu_memory_bytes(device)[index])

    def describe_model(self, version: str | None) -> None:
        """The slimserve_model_info series of the model this server serves."""
        info = Gauge("slimserve_model_info", "The version of the model served (stable or canary).",
                     ("model_version",), registry=self.registry)
        info.labels(version or "").set(1)

    def count(self, protocol: str, endpoint: str, code: str) -> None:
        self.requests.labels(protocol, endpoint, code).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text format body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class GenerationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.time_to_first_token = Histogram(
            "slimserve_time_to_first_token_seconds", "From a generation request's arrival to its first token.",
            buckets=_TOKEN_LATENCY_BUCKETS, registry=r,
        )
        self.inter_token_latency = Histogram(
            "slimserve_inter_token_latency_seconds", "Between two tokens of one sequence.",
            buckets=_TOKEN_LATENCY_BUCKETS, registry=r,
        )
        self.generated_tokens = Counter("slimserve_generated_tokens", "Tokens generated.", registry=r)
        self.prompt_tokens = Counter("slimserve_prompt_tokens", "Prompt tokens prefilled.", registry=r)
        self.running_sequences = Gauge("slimserve_running_sequences", "Sequences in the decode batch.", registry=r)
        self.waiting_sequences = Gauge(
            "slimserve_waiting_sequences", "Generation requests waiting for a KV cache slot.", registry=r
        )
        self.kv_cache_used = Gauge("slimserve_kv_cache_used_tokens", "KV cache tokens held by running sequences.",
                                   registry=r)
        self.kv_cache_capacity = Gauge("slimserve_kv_cache_capacity_tokens", "KV cache size in tokens.", registry=r)
