"""`slimserve compress`: run a CompressionJob's spec here (what the compression pod runs).

The spec comes from `--spec FILE` (a CompressionJob manifest or just its spec, YAML or JSON; of a file of
several manifests, such as the examples, its CompressionJob, chosen by `--name` when there are more) or from
the environment variable SLIMSERVE_JOB_SPEC. Progress goes to the sinks `build_sinks` returns: JSON lines
on stdout (machine-readable), or a progress bar when stdout is a terminal. Failures print one line on
stderr and, in a pod, to the termination log, so Kubernetes shows the reason.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from slimserve.api.workload import DEFAULTS, CompressorEnv, parse_device
from slimserve.cli.termination import report_failure

ENV_SPEC = CompressorEnv.variable("job_spec").name
ENV_STATUS_TARGET = CompressorEnv.variable("status_target").name  # set by the operator on the compression pod
ENV_DEVICE = CompressorEnv.variable("device").name
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
        "--status-target", metavar="NAMESPACE/NAME", type=_status_target,
        default=CompressorEnv.from_env(only=["status_target"]).status_target,
        help=f"also report progress and the result into this CompressionJob's status (default: ${ENV_STATUS_TARGET})",
    )
    parser.add_argument(
        "--device", type=parse_device, default=_env_device() or DEFAULTS.device,
        help="where calibration, fine-tuning, distillation and evaluation run: auto (a GPU when the process sees "
             f"one, else the CPU), cpu, cuda or cuda:N (default: ${ENV_DEVICE}, else {DEFAULTS.device})",
    )
    parser.set_defaults(handler=run)


def _env_device() -> str | None:
    from slimserve.api.workload import EnvError

    try:
        return CompressorEnv.from_env(only=["device"]).device
    except EnvError as exc:
        raise SystemExit(f"slimserve compress: environment variable {exc}") from None


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
    import logging

    from slimserve.cli.logs import configure_logging, log_format_from_env
    from slimserve.cli.malloc import limit_arenas
    from slimserve.cli.openmp import wait_passively

    # Warnings and errors of the libraries, bare as Python prints them unconfigured, or as JSON lines.
    configure_logging(logging.WARNING, log_format_from_env("compress"), text_format="%(message)s")

    wait_passively()  # before torch loads
    limit_arenas()  # before the tokenizer's and torch's threads allocate
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
        from slimserve.compression.errors import SpecDoesNotFit

        try:
            # The generation names the run a checkpoint belongs to: another generation's is not resumed.
            generation = CompressorEnv.from_env(only=["job_generation"]).job_generation
            compress(spec, sinks, device=args.device, generation=generation)  # reports its own errors to the sinks
        except SlimServeError as exc:
            code = EXIT_INVALID if isinstance(exc, SpecDoesNotFit) else EXIT_FAILED
            return _fail(exc.reason, str(exc), code)
        except Exception as exc:
            if CompressorEnv.from_env(only=["debug"]).debug:
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
    from pydantic import ValidationError

    from slimserve.api.compression_job import CompressionJobSpec
    from slimserve.api.field_errors import field_errors
    from slimserve.api.manifests import ManifestError, load_documents, parse_manifest, read_documents

    try:
        if path:
            documents, origin = load_documents(path), path
        else:
            text = CompressorEnv.from_env(only=["job_spec"]).job_spec or ""
            if not text.strip():
                raise SpecError(f"--spec FILE or the environment variable {ENV_SPEC} is required")
            documents, origin = read_documents(text, ENV_SPEC), ENV_SPEC
        manifest = _job_manifest(documents, origin, name)
    except ManifestError as exc:
        raise SpecError(str(exc)) from None
    try:
        if manifest is None:
            spec = CompressionJobSpec.model_validate(documents[0])
        else:
            spec = parse_manifest(manifest, origin).spec
    except ManifestError as exc:
        raise SpecError("\n".join(exc.errors)) from None
    except ValidationError as exc:
        raise SpecError("\n".join(field_errors(exc, root=("spec",)))) from None
    if not output_uri:
        return spec
    try:
        return CompressionJobSpec.model_validate({**spec.to_json(), "output": {"uri": output_uri}})
    except ValidationError as exc:
        raise SpecError("\n".join(field_errors(exc, root=("spec",), aliases={"spec.output.uri": "--output"}))) from None


def _job_manifest(documents: list, origin: str, name: str | None) -> dict | None:
    """The CompressionJob manifest to run (named `name` when given), or None when the file is a bare spec."""
    from slimserve.api.manifests import is_manifest, pick_manifest

    if len(documents) == 1 and isinstance(documents[0], dict) and not is_manifest(documents[0]):
        if name is not None:
            raise SpecError(f"--name {name}: {origin} holds a bare spec, not a named CompressionJob manifest")
        return None
    return pick_manifest(documents, "CompressionJob", origin, name, name_option="--name")


def _fail(reason: str, message: str, code: int) -> int:
    report_failure("compress", reason, message)
    return code
