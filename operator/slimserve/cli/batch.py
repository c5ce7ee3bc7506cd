"""`slimserve batch`: score a dataset as a BatchInference describes, here or as one shard of its Indexed Job.

With `--spec FILE` (a BatchInference manifest, or a file of several such as the examples, chosen by `--name`):
every shard on this machine, each a process, then the manifest. Without it, what a BatchInference's pod runs:
one shard, from the environment (the spec, the shard count, Kubernetes' JOB_COMPLETION_INDEX, the status
target), reporting into `status.shardProgress`. Events go to stdout as JSON lines; a failure prints one line
on stderr and, in a pod, to the termination log.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from slimserve.api.workload import PVC_ROOT, BatchEnv
from slimserve.cli.termination import report_failure

ENV_SPEC = BatchEnv.variable("batch_spec").name
ENV_INDEX = BatchEnv.variable("shard_index").name
EXIT_FAILED = 1
EXIT_INVALID = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    variables = ", ".join(variable.name for variable in BatchEnv.VARIABLES.values())
    parser = subparsers.add_parser(
        "batch",
        help="score a dataset with a model as a BatchInference describes (parts, sidecars, a manifest)",
        description=__doc__.split("\n\n")[1],
        epilog=f"Without --spec, the pod's variables: {variables}.",
    )
    parser.add_argument("--spec", metavar="FILE", help=f"BatchInference manifest, YAML or JSON (default: one shard from ${ENV_SPEC})")
    parser.add_argument("--name", metavar="NAME", help="the BatchInference (metadata.name) to run when the file holds several")
    parser.add_argument(
        "--shards-in-parallel", metavar="K", type=_positive, default=None,
        help="shards scored at the same time, each a process (default: spec.parallelism)",
    )
    parser.add_argument("--workdir", type=Path, default=Path(".slimserve"),
                        help="with --spec: pvc://CLAIM/path is WORKDIR/pvc/CLAIM/path, as with slimserve run (default .slimserve)")
    parser.set_defaults(handler=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    import logging

    from slimserve.cli.logs import configure_logging, log_format_from_env
    from slimserve.cli.openmp import wait_passively

    configure_logging(logging.WARNING, log_format_from_env("batch"), text_format="%(message)s")
    wait_passively()  # before torch loads
    if args.spec:
        return _run_locally(args)
    return _run_shard()


def _run_locally(args: argparse.Namespace) -> int:
    from slimserve.api.manifests import ManifestError
    from slimserve.artifacts import SlimServeError
    from slimserve.batch.local import run_batch_locally
    from slimserve.batch.manifests import batch_from_file

    try:
        name, spec = batch_from_file(args.spec, args.name)
        with PVC_ROOT.defaulted((args.workdir / "pvc").resolve()):  # the shards inherit it
            result = run_batch_locally(spec, in_parallel=args.shards_in_parallel)
    except ManifestError as exc:
        return _fail("InvalidSpec", str(exc), EXIT_INVALID)
    except SlimServeError as exc:
        return _fail(exc.reason, str(exc), EXIT_FAILED)
    print(f"BatchInference {name}: {result.records} records in {result.shards} shards, {result.seconds:.1f} s "
          f"({result.records_per_second:.1f} records/s); manifest {result.manifest_uri} ({result.manifest_digest})")
    return 0


def _run_shard() -> int:
    from pydantic import ValidationError

    from slimserve.api.batch_inference import BatchInferenceSpec, ShardProgress
    from slimserve.api.field_errors import field_errors
    from slimserve.api.workload import EnvError
    from slimserve.artifacts import SlimServeError
    from slimserve.batch.runner import Shard, cluster_run_id, json_lines, local_run_id, run_shard

    try:
        env = BatchEnv.from_env()
    except EnvError as exc:
        return _fail("InvalidSpec", f"environment variable {exc}", EXIT_INVALID)
    if not (env.batch_spec or "").strip():
        return _fail("InvalidSpec", f"--spec FILE or the environment variable {ENV_SPEC} is required", EXIT_INVALID)
    try:
        spec = BatchInferenceSpec.model_validate_json(env.batch_spec)
    except ValidationError as exc:
        return _fail("InvalidSpec", "\n".join(field_errors(exc, root=("spec",))), EXIT_INVALID)
    shards, index = env.shards or spec.shard_count, env.shard_index or 0
    if index >= shards:
        return _fail("InvalidSpec", f"{ENV_INDEX} {index}: outside the {shards} shards", EXIT_INVALID)
    _use_cpu_share()

    reporter = _reporter(env, index)
    shard = Shard(spec, index, shards, "", artifact_digest=env.artifact_digest)
    try:
        if reporter is None:
            shard.run_id = local_run_id(env.batch_spec, shards)
        else:
            shard.run_id = cluster_run_id(reporter.namespace, reporter.name, reporter.start(), reporter.generation)
        outcome = run_shard(shard, json_lines(sys.stdout), reporter)
        if reporter is not None:
            reporter.finished(outcome.entry())
    except Exception as exc:  # a SlimServeError names its reason; anything else is a bug, said in one line too
        reason = exc.reason if isinstance(exc, SlimServeError) else "InternalError"
        message = str(exc) if isinstance(exc, SlimServeError) else f"{type(exc).__name__}: {exc}"
        if reporter is not None and reason != "StaleGeneration":
            failed = ShardProgress(generation=0, state="Failed", records_done=shard.records_done,
                                   records_total=shard.records_total, message=f"{reason}: {message}"[:4000])
            try:
                reporter.finished(failed)
            except SlimServeError:
                pass  # the termination message still says why
        return _fail(reason, message, EXIT_FAILED)
    return 0


def _reporter(env: BatchEnv, index: int):
    if not env.status_target:
        return None
    from slimserve.batch.progress import ShardReporter

    namespace, _, name = env.status_target.partition("/")
    return ShardReporter(namespace, name, index, env.job_generation)


def _use_cpu_share() -> None:
    """torch's threads: OMP_NUM_THREADS when set (a local run's share), else the container's CPU limit."""
    if "OMP_NUM_THREADS" not in os.environ:
        from slimserve.serving.threads import configure_torch_threads

        configure_torch_threads()


def _fail(reason: str, message: str, code: int) -> int:
    report_failure("batch", reason, message)
    return code
