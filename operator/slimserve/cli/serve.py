"""`slimserve serve`: run the inference server (Open Inference Protocol v2, REST + gRPC) for one model.

Every flag has an environment variable (the operator configures pods through them); a flag given on
the command line wins over its variable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slimserve.cli.logs import configure_logging, log_format
from slimserve.serving.web.options import add_web_arguments, web_options

ENV_PREFIX = "SLIMSERVE_"


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0-65535")
    return port


@dataclass(frozen=True)
class Option:
    flag: str
    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


OPTIONS = (
    Option("--artifact", "ARTIFACT", str, None, "model URI: file://, pvc://, s3:// artifact or builtin://NAME (required)"),
    Option("--artifact-digest", "ARTIFACT_DIGEST", str, None, "refuse the artifact unless its digest is this sha256:..."),
    Option("--model-name", "MODEL_NAME", str, None, "name in the protocol's paths (default: the model's own name)"),
    Option("--host", "HOST", str, "0.0.0.0", "address to listen on"),
    Option("--http-port", "HTTP_PORT", port, 8080, "REST port (also /metrics)"),
    Option("--grpc-port", "GRPC_PORT", port, 9000, "gRPC port"),
    Option("--metrics-port", "METRICS_PORT", port, None, "also serve /metrics on this port"),
    Option("--max-batch-size", "MAX_BATCH_SIZE", int, 32, "most rows per model call, and per request"),
    Option("--max-latency-ms", "MAX_LATENCY_MS", float, 5.0, "longest a batch waits for requests already arriving"),
    Option("--max-body-bytes", "MAX_BODY_BYTES", int, 64 * 1024 * 1024, "largest request body or gRPC message"),
    Option("--header-timeout-s", "HEADER_TIMEOUT_S", float, 10.0,
           "HTTP: close a connection whose request headers are not complete within this time"),
    Option("--body-timeout-s", "BODY_TIMEOUT_S", float, 60.0,
           "HTTP: answer 408 and close when a request body is not complete this long after its headers"),
    Option("--drain-timeout-s", "DRAIN_TIMEOUT_S", float, 20.0, "after SIGTERM, longest wait for in-flight requests"),
    Option("--shutdown-delay-s", "SHUTDOWN_DELAY_S", float, 0.0, "after SIGTERM, keep serving (not ready) this long first"),
    Option("--torch-threads", "TORCH_THREADS", int, 0, "torch threads; 0 follows the container's CPU limit"),
    Option("--log-level", "LOG_LEVEL", str, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    Option("--log-format", "LOG_FORMAT", log_format, "text", "text, or json: one object per line (time, level, logger, message)"),
)


def _env_default(option: Option, environ: dict[str, str]) -> Any:
    name = ENV_PREFIX + option.env
    if name not in environ or environ[name] == "":
        return option.default
    try:
        return option.parse(environ[name])
    except ValueError as error:
        raise SystemExit(f"slimserve serve: environment variable {name}: {error}") from None


def _epilog() -> str:
    lines = ["environment variables (a flag on the command line wins):"]
    lines += [f"  {ENV_PREFIX + o.env:<28} {o.flag}" for o in OPTIONS]
    lines.append(f"  {ENV_PREFIX + 'BATCHING':<28} false = --no-batching")
    lines += [
        "",
        "endpoints: REST /v2/health/live, /v2/health/ready, /v2, /v2/models/NAME[/versions/V][/ready|/infer],",
        "/metrics (in-flight requests: slimserve_inflight_requests); gRPC inference.GRPCInferenceService.",
        "SIGTERM: not ready, then drain; exits 0 within shutdown-delay + drain-timeout + ~1 s.",
    ]
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction, environ: dict[str, str] | None = None) -> argparse.ArgumentParser:
    environ = os.environ if environ is None else environ
    parser = subparsers.add_parser(
        "serve",
        help="serve one model over the Open Inference Protocol (REST + gRPC)",
        description=__doc__.splitlines()[0],
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for option in OPTIONS:
        parser.add_argument(
            option.flag, type=option.parse, default=_env_default(option, environ), metavar=option.env,
            help=f"{option.help} [env {ENV_PREFIX}{option.env}]",
        )
    batching = environ.get(ENV_PREFIX + "BATCHING", "")
    try:
        batching_default = _bool(batching) if batching else True
    except ValueError as error:
        raise SystemExit(f"slimserve serve: environment variable {ENV_PREFIX}BATCHING: {error}") from None
    parser.add_argument(
        "--no-batching", dest="batching", action="store_false", default=batching_default,
        help=f"run each request on its own [env {ENV_PREFIX}BATCHING=false]",
    )
    add_web_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    configure_logging(getattr(logging, str(args.log_level).upper(), logging.INFO), args.log_format)
    from slimserve.serving.config import ServerConfig
    from slimserve.serving.server import run as run_server
    from slimserve.serving.threads import configure_torch_threads

    if not args.artifact:
        print("slimserve serve: --artifact (or SLIMSERVE_ARTIFACT) is required", file=sys.stderr)
        return 2
    try:
        config = ServerConfig(
            artifact=args.artifact, artifact_digest=args.artifact_digest, model_name=args.model_name,
            host=args.host, http_port=args.http_port,
            grpc_port=args.grpc_port, metrics_port=args.metrics_port, batching=args.batching,
            max_batch_size=args.max_batch_size, max_latency_ms=args.max_latency_ms,
            max_body_bytes=args.max_body_bytes, header_timeout_s=args.header_timeout_s,
            body_timeout_s=args.body_timeout_s, drain_timeout_s=args.drain_timeout_s,
            shutdown_delay_s=args.shutdown_delay_s, torch_threads=args.torch_threads, web=web_options(args),
        )
    except ValueError as error:
        print(f"slimserve serve: {error}", file=sys.stderr)
        return 2
    configure_torch_threads(config.torch_threads)
    status = run_server(config)
    # Drained and stopped: nothing is left to clean up, and the interpreter's teardown of torch alone
    # takes seconds on a busy node, time that counts against the pod's termination grace period.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
