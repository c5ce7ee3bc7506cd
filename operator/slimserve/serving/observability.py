"""Payload logging and tracing settings, from `slimserve serve` flags or their variables (tracing also OTEL_*).

Light on purpose: the CLI imports it while building its parser; the senders (`payload_log`, `tracing_otel`)
are imported only by a server that has them on.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from slimserve.api.workload import DEFAULTS, PAYLOAD_LOG_MODES, EnvError, ServerEnv, parse_payload_log_mode

FIELDS = ["service_name", "service_namespace", "payload_log_url", "payload_log_mode", "payload_log_sample_rate",
          "payload_log_timeout_s", "tracing_endpoint", "tracing_sample_rate"]
# The OpenTelemetry SDK's own variables for the collector, read when SLIMSERVE_TRACING_ENDPOINT is unset.
OTEL_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def _env(name: str) -> str:
    return ServerEnv.variable(name).name


@dataclass(frozen=True)
class PayloadLogSettings:
    url: str  # http(s):// sink of the CloudEvents
    mode: str = DEFAULTS.payload_log_mode  # all, request or response
    sample_rate: float = DEFAULTS.payload_log_sample_rate  # (0, 1]
    timeout_s: float = DEFAULTS.payload_log_timeout_s  # each socket operation with the sink
    service: str = ""  # the ModelService: ce-inferenceservicename (default: the model's name)
    namespace: str = ""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--payload-log-url: {self.url!r} is not an http:// or https:// URL")
        if self.mode not in PAYLOAD_LOG_MODES:
            raise ValueError(f"--payload-log-mode: {self.mode!r} is not one of {', '.join(PAYLOAD_LOG_MODES)}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"--payload-log-sample-rate: {self.sample_rate!r} is not in (0, 1]")
        if not self.timeout_s > 0:
            raise ValueError(f"--payload-log-timeout-s: {self.timeout_s!r} is not positive")


@dataclass(frozen=True)
class TracingSettings:
    endpoint: str  # OTLP/gRPC collector, e.g. http://otel-collector:4317 (http:// is plain text)
    sample_rate: float = DEFAULTS.tracing_sample_rate  # of the traces this server starts
    service_name: str = "slimserve"  # resource service.name (OTEL_SERVICE_NAME wins)

    def __post_init__(self) -> None:
        if not 0 <= self.sample_rate <= 1:
            raise ValueError(f"--tracing-sample-rate: {self.sample_rate!r} is not in [0, 1]")


def add_observability_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] = os.environ) -> None:
    """The flags `payload_log_settings` and `tracing_settings` read, each defaulting to its variable."""
    try:
        env = ServerEnv.from_env(environ, only=FIELDS)
    except EnvError as error:
        raise SystemExit(f"slimserve serve: environment variable {error}") from None
    otel_endpoint = next((environ[name] for name in OTEL_ENDPOINT_VARIABLES if environ.get(name)), None)
    group = parser.add_argument_group("payload logging and tracing")
    group.add_argument("--service-name", default=env.service_name, metavar="NAME",
                       help="the ModelService this server belongs to: the payload log's ce-inferenceservicename "
                            f"and the traces' service.name [env {_env('service_name')}]")
    group.add_argument("--service-namespace", default=env.service_namespace, metavar="NAMESPACE",
                       help=f"its namespace: the payload log's ce-namespace [env {_env('service_namespace')}]")
    group.add_argument("--payload-log-url", default=env.payload_log_url, metavar="URL",
                       help="send inference requests and responses as CloudEvents (KServe's logger format) to this "
                            f"http(s) sink [env {_env('payload_log_url')}; default off]")
    group.add_argument("--payload-log-mode", type=parse_payload_log_mode, metavar="MODE",
                       default=env.or_default("payload_log_mode"),
                       help=f"all, request or response [env {_env('payload_log_mode')}]")
    group.add_argument("--payload-log-sample-rate", type=float, metavar="RATE",
                       default=env.or_default("payload_log_sample_rate"),
                       help=f"share of requests logged, (0, 1], chosen by request id [env {_env('payload_log_sample_rate')}]")
    group.add_argument("--payload-log-timeout-s", type=float, metavar="SECONDS",
                       default=env.or_default("payload_log_timeout_s"),
                       help=f"longest wait for each socket operation with the sink [env {_env('payload_log_timeout_s')}]")
    group.add_argument("--tracing-endpoint", default=env.tracing_endpoint or otel_endpoint, metavar="URL",
                       help="export OpenTelemetry traces over OTLP/gRPC to this collector, e.g. http://collector:4317 "
                            f"[env {_env('tracing_endpoint')}, else {' or '.join(OTEL_ENDPOINT_VARIABLES)}; "
                            "default off]")
    group.add_argument("--tracing-sample-rate", type=float, metavar="RATE", default=env.or_default("tracing_sample_rate"),
                       help="share of new traces sampled, [0, 1]; a caller's traceparent decides for its own "
                            f"[env {_env('tracing_sample_rate')}]")


def payload_log_settings(args: argparse.Namespace) -> PayloadLogSettings | None:
    """Settings from parsed flags; None when no sink is set. ValueError names the flag at fault."""
    if not args.payload_log_url:
        return None
    return PayloadLogSettings(
        args.payload_log_url, args.payload_log_mode, args.payload_log_sample_rate, args.payload_log_timeout_s,
        args.service_name or "", args.service_namespace or "",
    )


def tracing_settings(args: argparse.Namespace) -> TracingSettings | None:
    """Settings from parsed flags; None (tracing off) when no endpoint is set."""
    if not args.tracing_endpoint:
        return None
    return TracingSettings(args.tracing_endpoint, args.tracing_sample_rate, args.service_name or "slimserve")
