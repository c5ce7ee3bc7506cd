"""`slimserve run -f FILE`: compress and serve a manifest's models on this machine, no cluster needed."""

from __future__ import annotations

import argparse
from pathlib import Path

from slimserve.api.workload import DEFAULTS, DEBUG


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="compress and serve the models of a manifest file locally (no cluster)",
        description="Run the CompressionJobs of FILE here (progress, metrics table, report), then score the "
        "datasets of its BatchInferences (shards as processes, then the manifest), then serve its "
        "ModelService over REST and gRPC, send one self-check request, and keep serving until Ctrl-C. "
        "pvc://CLAIM/path maps to WORKDIR/pvc/CLAIM/path.",
    )
    parser.add_argument("-f", "--file", required=True, type=Path, help="manifest file, e.g. examples/quickstart.yaml")
    parser.add_argument("--once", action="store_true", help="exit after the self-check (for scripts and tests)")
    parser.add_argument("--host", default="127.0.0.1", help="address the server listens on (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=DEFAULTS.http_port, help=f"REST port (default {DEFAULTS.http_port})")
    parser.add_argument("--grpc-port", type=int, default=DEFAULTS.grpc_port, help=f"gRPC port (default {DEFAULTS.grpc_port})")
    parser.add_argument("--workdir", type=Path, default=Path(".slimserve"),
                        help="where pvc:// volumes and the server log live (default .slimserve)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from slimserve.cli.openmp import wait_passively

    wait_passively()  # before torch loads; the server process inherits it
    from slimserve.api.manifests import ManifestError
    from slimserve.artifacts import SlimServeError
    from slimserve.local.plan import PlanError, plan_from_file
    from slimserve.local.runner import RunOptions, quiet_library_warnings, run_plan, stdout_console
    from slimserve.local.server_process import ServerError

    quiet_library_warnings()
    console = stdout_console()
    options = RunOptions(host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                         workdir=args.workdir, once=args.once)
    try:
        return run_plan(plan_from_file(args.file), options, console)
    except ManifestError as exc:
        return _fail(console, f"invalid manifest {exc}")
    except (PlanError, ServerError) as exc:
        return _fail(console, str(exc))
    except SlimServeError as exc:
        return _fail(console, f"{exc.reason}: {exc}")
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line, the traceback on request
        if DEBUG.read():
            raise
        return _fail(console, f"internal error: {type(exc).__name__}: {exc} ({DEBUG.name}=1 shows the traceback)")


def _fail(console, message: str) -> int:
    one_line = " ".join(message.split())
    console.print(f"[red]slimserve run:[/] {one_line}", soft_wrap=True)
    return 1
