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

from slimserve.api.workload import PREFIX, EnvError, ServerEnv, parse_device, parse_grpc_http2, parse_port
from slimserve.cli.logs import configure_logging, log_format
from slimserve.serving.observability import add_observability_arguments, payload_log_settings, tracing_settings
from slimserve.serving.auth_options import add_auth_arguments, auth_config
from slimserve.serving.tls import add_tls_arguments, probe_port, tls_options
from slimserve.serving.web.options import add_web_arguments, web_options


@dataclass(frozen=True)
class Option:
    flag: str
    parse: Callable[[str], Any]
    help: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def env(self) -> str:
        return ServerEnv.variable(self.dest).name


# Each flag's variable and default come from the pod contract (slimserve.api.workload).
OPTIONS = (
    Option("--artifact", str, "model URI: file://, pvc://, s3:// artifact or builtin://NAME (required)"),
    Option("--artifact-digest", str, "refuse the artifact unless its digest is this sha256:..."),
    Option("--model-name", str, "name in the protocol's paths (default: the model's own name)"),
    Option("--model-version", str,
           "which of a ModelService's models this is (stable or canary): slimserve_model_info's model_version label"),
    Option("--host", str, "address to listen on"),
    Option("--http-port", parse_port, "REST port (also /metrics)"),
    Option("--grpc-port", parse_port, "gRPC port"),
    Option("--grpc-http2", parse_grpc_http2,
           "the gRPC port's HTTP/2: auto (libnghttp2 where installed, else the pure-Python h2), nghttp2 or h2"),
    Option("--metrics-port", parse_port, "also serve /metrics on this port"),
    Option("--max-batch-size", int, "most rows per model call, and per request"),
    Option("--max-latency-ms", float, "longest a batch waits for requests already arriving"),
    Option("--max-body-bytes", int, "largest request body or gRPC message"),
    Option("--header-timeout-s", float,
           "close a connection whose request headers are not complete within this time (gRPC: whose HTTP/2 "
           "start)"),
    Option("--body-timeout-s", float,
           "answer 408 and close when a request body is not complete this long after its headers (gRPC: end "
           "the call with DEADLINE_EXCEEDED)"),
    Option("--drain-timeout-s", float, "after SIGTERM, longest wait for in-flight requests"),
    Option("--shutdown-delay-s", float, "after SIGTERM, keep serving (not ready) this long first"),
    Option("--torch-threads", int, "torch threads; 0 follows the container's CPU limit"),
    Option("--device", parse_device,
           "auto (a GPU when the process sees one, else the CPU), cpu, cuda or cuda:N; a GPU asked for but not "
           "usable stops the server with the reason"),
    Option("--kv-cache-bytes", int,
           "decoders: the KV cache's memory bound in bytes; 0: --max-sequences sequences of the whole context"),
    Option("--max-sequences", int, "decoders: most sequences generated at once (KV cache slots)"),
    Option("--max-waiting", int, "decoders: most requests waiting for a slot; one more gets 429 with Retry-After"),
    Option("--queue-timeout-s", float, "decoders: longest wait for a slot; then 503 with Retry-After"),
    Option("--context-length", int,
           "decoders: tokens a sequence may hold, prompt and output together, at most the model's; 0: the model's"),
    Option("--max-tokens", int,
           "decoders: most tokens one request may generate (more: 400 naming its max_tokens); 0: the rest of the context"),
    Option("--log-level", str, "DEBUG, INFO, WARNING or ERROR"),
    Option("--log-format", log_format, "text, or json: one object per line (time, level, logger, message)"),
)
BATCHING = ServerEnv.variable("batching").name
ACCESS_LOG = ServerEnv.variable("access_log").name
CUDA_GRAPHS = ServerEnv.variable("cuda_graphs").name
ALLOW_OUTSIDE_BUDGET = ServerEnv.variable("allow_outside_budget").name


def _environment(environ: dict[str, str]) -> ServerEnv:
    """The variables behind the flags (the web ones are read when the server starts, see `web_options`)."""
    try:
        flags = ["batching", "access_log", "cuda_graphs", "allow_outside_budget"]
        return ServerEnv.from_env(environ, only=[option.dest for option in OPTIONS] + flags)
    except EnvError as error:
        raise SystemExit(f"slimserve serve: environment variable {error}") from None


def _epilog() -> str:
    lines = ["environment variables (a flag on the command line wins):"]
    lines += [f"  {o.env:<28} {o.flag}" for o in OPTIONS]
    lines.append(f"  {BATCHING:<28} false = --no-batching")
    lines.append(f"  {ACCESS_LOG:<28} false = --no-access-log")
    lines.append(f"  {CUDA_GRAPHS:<28} true = --cuda-graphs")
    lines.append(f"  {ALLOW_OUTSIDE_BUDGET:<28} true = --allow-outside-budget")
    lines += [
        "",
        "endpoints: REST /v2/health/live, /v2/health/ready, /v2, /v2/models/NAME[/versions/V][/ready|/infer],",
        "/metrics (in-flight requests: slimserve_inflight_requests); gRPC inference.GRPCInferenceService and",
        "grpc.health.v1.Health. X-Request-Id (gRPC: x-request-id) is kept or generated and sent back.",
        "A decoder (builtin://tiny-lm, a Hugging Face decoder directory or its artifact) also has /v1/completions,",
        "/v1/chat/completions, /v1/models (OpenAI-compatible) and /v2/models/NAME/generate[_stream]; no gRPC generation.",
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
    env = _environment(environ)
    for option in OPTIONS:
        parser.add_argument(
            option.flag, type=option.parse, default=env.or_default(option.dest),
            metavar=option.env.removeprefix(PREFIX), help=f"{option.help} [env {option.env}]",
        )
    parser.add_argument(
        "--no-batching", dest="batching", action="store_false", default=env.or_default("batching"),
        help=f"run each request on its own [env {BATCHING}=false]",
    )
    parser.add_argument(
        "--access-log", action=argparse.BooleanOptionalAction, default=env.or_default("access_log"),
        help=f"one JSON line per request on stdout (request id, model, protocol, status, latency, batch size) "
             f"[env {ACCESS_LOG}]",
    )
    parser.add_argument(
        "--cuda-graphs", action=argparse.BooleanOptionalAction, default=env.or_default("cuda_graphs"),
        help=f"on a GPU, replay a recorded CUDA graph per batch-size bucket instead of launching each kernel "
             f"[env {CUDA_GRAPHS}]",
    )
    parser.add_argument(
        "--allow-outside-budget", action=argparse.BooleanOptionalAction, default=env.or_default("allow_outside_budget"),
        help=f"serve an artifact whose compression missed its accuracy budget (withinBudget: false in its manifest); "
             f"without it such an artifact is refused [env {ALLOW_OUTSIDE_BUDGET}]",
    )
    add_web_arguments(parser)
    add_tls_arguments(parser)
    add_auth_arguments(parser)
    add_observability_arguments(parser, environ)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    configure_logging(getattr(logging, str(args.log_level).upper(), logging.INFO), args.log_format)
    from slimserve.serving.config import ServerConfig
    from slimserve.serving.generation.options import GenerationOptions
    from slimserve.serving.server import run as run_server
    from slimserve.serving.threads import configure_torch_threads

    if not args.artifact:
        print(f"slimserve serve: --artifact (or {OPTIONS[0].env}) is required", file=sys.stderr)
        return 2
    try:
        config = ServerConfig(
            artifact=args.artifact, artifact_digest=args.artifact_digest, model_name=args.model_name,
            model_version=args.model_version,
            host=args.host, http_port=args.http_port,
            grpc_port=args.grpc_port, grpc_http2=args.grpc_http2, metrics_port=args.metrics_port,
            batching=args.batching,
            max_batch_size=args.max_batch_size, max_latency_ms=args.max_latency_ms,
            max_body_bytes=args.max_body_bytes, header_timeout_s=args.header_timeout_s,
            body_timeout_s=args.body_timeout_s, drain_timeout_s=args.drain_timeout_s,
            shutdown_delay_s=args.shutdown_delay_s, torch_threads=args.torch_threads, access_log=args.access_log,
            device=args.device, cuda_graphs=args.cuda_graphs, allow_outside_budget=args.allow_outside_budget,
            web=web_options(args), tls=tls_options(args), probe_port=probe_port(args), auth=auth_config(args),
            payload_log=payload_log_settings(args), tracing=tracing_settings(args),
            generation=GenerationOptions(
                kv_cache_bytes=args.kv_cache_bytes, max_sequences=args.max_sequences, max_waiting=args.max_waiting,
                queue_timeout_s=args.queue_timeout_s, context_length=args.context_length, max_tokens=args.max_tokens,
            ),
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
