"""`slimserve operator`: run the Kopf operator against the cluster in KUBECONFIG or in-cluster credentials."""

from __future__ import annotations

import argparse

from slimserve.api.workload import OperatorEnv
from slimserve.cli.logs import ENV_LOG_FORMAT, log_format, log_format_from_env


def register(subparsers: argparse._SubParsersAction) -> None:
    env = OperatorEnv.from_env(only=["peering", "log_level"])
    parser = subparsers.add_parser(
        "operator",
        help="run the operator (CompressionJob and ModelService controllers)",
        description=f"Run the SlimServe operator. Environment: {_variable('config')} (config file), "
        f"{_variable('watch_namespaces')} (comma-separated), KUBECONFIG outside a cluster.",
    )
    parser.add_argument(
        "--namespace",
        action="append",
        default=None,
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument("--config", default=None, help="operator configuration file (node pools, images)")
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="liveness endpoint URL, e.g. http://0.0.0.0:8080/healthz ('' disables it)",
    )
    parser.add_argument(
        "--peering",
        default=env.peering,
        help="Kopf peering name, so that replicas never act at once (needs Kopf's peering CRDs); default standalone",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=env.log_level or "info",
        help=f"log level (default info, or {_variable('log_level')})",
    )
    parser.add_argument(
        "--log-format",
        type=log_format,
        default=log_format_from_env("operator"),
        help=f"text, or json: one object per line, as Kopf writes it (default text, or {ENV_LOG_FORMAT})",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port at /metrics, e.g. 9090; default off",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from slimserve.controller import app  # kopf and the kubernetes client load only when needed

    namespaces = args.namespace or list(OperatorEnv.from_env(only=["watch_namespaces"]).watch_namespaces or ())
    app.run(
        namespaces=namespaces,
        liveness_endpoint=args.liveness or None,
        peering=args.peering,
        config_path=args.config,
        log_level=args.log_level,
        log_format=args.log_format,
        metrics_port=args.metrics_port,
    )
    return 0


def _variable(field: str) -> str:
    return OperatorEnv.variable(field).name
