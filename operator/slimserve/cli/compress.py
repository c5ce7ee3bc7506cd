"""`slimserve compress`: run a CompressionJob's spec here (what the compression pod runs).

The spec comes from `--spec FILE` (a CompressionJob manifest or just its spec, YAML or JSON; of a file of
several manifests, such as the examples, its CompressionJob, chosen by `--name` when there are more) or from
the environment variable SLIMSERVE_JOB_SPEC. Progress goes to the sinks `build_sinks` returns: JSON lines
on stdout (machine-readable), or a progress bar when stdout is a terminal. Failures print one line on
stderr and, in a pod, to the termination log, so Kubernetes shows the reason.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

ENV_SPEC = "SLIMSERVE_JOB_SPEC"
ENV_TERMINATION_LOG = "SLIMSERVE_TERMINATION_LOG"
ENV_DEBUG = "SLIMSERVE_DEBUG"
ENV_STATUS_TARGET = "SLIMSERVE_STATUS_TARGET"  # set by the operator on the compression pod
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
EXIT_FAILED = 1
EXIT_INVALID = 2


class SpecError(Exception):
    """The spec could not be read or is invalid; the message is one line per problem."""

    reason = "InvalidSpec"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compress",
        help="compress a model as a CompressionJob describes (prune, distill, quantize, evaluate, write the artifact)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--spec", metavar="FILE", help=f"CompressionJob manifest or spec, YAML or JSON (default: ${ENV_SPEC})")
    parser.add_argument(
        "--name", metavar="NAME", help="the CompressionJob (metadata.name) to run when the file holds several"
    )
    parser.add_argument("--output", metavar="URI", help="artifact URI (file://, pvc://, s3://); overrides spec.output.uri")
    parser.add_argument(
        "--progress", choices=("auto", "json", "rich"), default="auto",
        help="json: JSON lines on stdout; rich: a progress bar; auto: rich on a terminal, json otherwise",
    )
    parser.add_argument(
        "--status-target", metavar="NAMESPACE/NAME", type=_status_target, default=os.environ.get(ENV_STATUS_TARGET),
        help=f"also report progress and the result into this CompressionJob's status (default: ${ENV_STATUS_TARGET})",
    )
    parser.set_defaults(handler=run)


def _status_target(value: str) -> str:
    from slimserve.compression.status_sink import parse_target

    try:
        parse_target(value, option=None)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def build_sinks(args: argparse.Namespace) -> list:
    """The progress sinks of this run; add a sink here to report somewhere else too."""
    from slimserve.compression.progress import JsonLinesSink, RichProgressSink

    mode = args.progress
    if mode == "auto":
        mode = "rich" if sys.stdout.isatty() else "json"
    sinks = [RichProgressSink() if mode == "rich" else JsonLinesSink(sys.stdout)]
    if args.status_target:
        from slimserve.compression.status_sink import KubernetesStatusSink

        sinks.append(KubernetesStatusSink.for_target(args.status_target))
    return sinks


def run(args: argparse.Namespace) -> int:
    from slimserve.cli.openmp import wait_passively

    wait_passively()  # before torch loads
    from slimserve.artifacts import SlimServeError

    sinks = build_sinks(args)
    try:
        try:
            spec = load_spec(args.spec, args.output, name=args.name)
        except SpecError as exc:
            for sink in sinks:
                sink.error(exc.reason, " ".join(str(exc).splitlines()))
            return _fail(exc.reason, str(exc), EXIT_INVALID)

        from slimserve.compression import compress
        from slimserve.compression.errors import InvalidSpec

        try:
            compress(spec, sinks)  # reports its own errors to the sinks
        except SlimServeError as exc:
            code = EXIT_INVALID if isinstance(exc, InvalidSpec) else EXIT_FAILED
            return _fail(exc.reason, str(exc), code)
        except Exception as exc:
            if os.environ.get(ENV_DEBUG):
                traceback.print_exc()
            return _fail("InternalError", f"{type(exc).__name__}: {exc}", EXIT_FAILED)
        return 0
    finally:
        for sink in sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()


def load_spec(path: str | None, output_uri: str | None = None, *, name: str | None = None):
    """The CompressionJobSpec from a file or $SLIMSERVE_JOB_SPEC; SpecError with one line per invalid field."""
    import yaml
    from pydantic import ValidationError

    from slimserve.api.compression_job import CompressionJob, CompressionJobSpec

    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"--spec: cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
        origin = path
    else:
        text = os.environ.get(ENV_SPEC, "")
        if not text.strip():
            raise SpecError(f"--spec FILE or the environment variable {ENV_SPEC} is required")
        origin = ENV_SPEC
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise SpecError(f"{origin}: not valid YAML or JSON: {' '.join(str(exc).split())}") from None
    data = _job_document(documents, origin, name)
    is_manifest = _is_manifest(data)
    try:
        if is_manifest:
            spec = CompressionJob.model_validate(data).spec
        else:
            spec = CompressionJobSpec.model_validate(data)
        if output_uri:
            spec = CompressionJobSpec.model_validate({**spec.to_json(), "output": {"uri": output_uri}})
    except ValidationError as exc:
        raise SpecError("\n".join(_field_errors(exc, "" if is_manifest else "spec", output_uri))) from None
    return spec


def _is_manifest(data: object) -> bool:
    return isinstance(data, dict) and "spec" in data and ("kind" in data or "apiVersion" in data)


def _job_document(documents: list, origin: str, name: str | None) -> dict:
    """The one document to run: a bare spec, or the CompressionJob manifest (named `name` when given)."""
    if len(documents) == 1 and isinstance(documents[0], dict) and not _is_manifest(documents[0]):
        if name is not None:
            raise SpecError(f"--name {name}: {origin} holds a bare spec, not a named CompressionJob manifest")
        return documents[0]
    for data in documents:
        if not isinstance(data, dict):
            raise SpecError(f"{origin}: expected a CompressionJob manifest or its spec (a mapping), got {type(data).__name__}")
    if not documents:
        raise SpecError(f"{origin}: empty; expected a CompressionJob manifest or its spec")
    manifests = [d for d in documents if _is_manifest(d)]
    jobs = [d for d in manifests if d.get("kind", "CompressionJob") == "CompressionJob"]
    names = [str((d.get("metadata") or {}).get("name", "")) for d in jobs]
    if not jobs:
        kinds = ", ".join(sorted({str(d.get("kind")) for d in manifests})) or "no manifest"
        raise SpecError(f"{origin}: no CompressionJob in the file (found: {kinds})")
    if name is not None:
        chosen = [job for job, job_name in zip(jobs, names) if job_name == name]
        if not chosen:
            raise SpecError(f"--name {name}: no CompressionJob of that name in {origin} (found: {', '.join(names)})")
        if len(chosen) > 1:
            raise SpecError(f"--name {name}: {len(chosen)} CompressionJobs of that name in {origin}")
        return chosen[0]
    if len(jobs) > 1:
        raise SpecError(f"{origin}: {len(jobs)} CompressionJobs ({', '.join(names)}); choose one with --name")
    return jobs[0]


def _field_errors(exc, prefix: str, output_uri: str | None) -> list[str]:
    lines = []
    for error in exc.errors():
        parts = [prefix] if prefix else []
        for item in error["loc"]:
            if isinstance(item, int):
                parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
            else:
                parts.append(str(item))
        where = ".".join(parts) or "spec"
        message = error["msg"].removeprefix("Value error, ")
        if where.endswith("output.uri") and output_uri:
            where = "--output"
        lines.append(f"{where}: {message}" if not message.startswith("spec.") else message)
    return lines


def _fail(reason: str, message: str, code: int) -> int:
    one_line = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"slimserve compress: {reason}: {one_line}", file=sys.stderr)
    _write_termination_log(f"{reason}: {one_line}")
    return code


def _write_termination_log(line: str) -> None:
    """Kubernetes shows this file's content as the container's termination message."""
    configured = os.environ.get(ENV_TERMINATION_LOG)
    path = Path(configured or DEFAULT_TERMINATION_LOG)
    if not configured and not (path.exists() and os.access(path, os.W_OK)):
        return
    try:
        path.write_text(line[:4000] + "\n", encoding="utf-8")
    except OSError:
        pass  # best effort: stderr already has the reason
