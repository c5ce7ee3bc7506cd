"""A whole BatchInference on this machine: every shard as the pod command (`slimserve batch` reading its
`BatchEnv`, one process a shard, some at a time), then the manifest. `slimserve batch --spec` and
`slimserve run` both run it so."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimserve.api.workload import BatchEnv, job_spec_text
from slimserve.artifacts.errors import SlimServeError
from slimserve.batch.datasets import list_dataset
from slimserve.batch.output import OutputPrefix, write_manifest_if_complete
from slimserve.batch.runner import local_run_id

if TYPE_CHECKING:
    from slimserve.api.batch_inference import BatchInferenceSpec


class ShardsFailed(SlimServeError):
    reason = "ShardsFailed"


@dataclass(frozen=True)
class LocalBatchResult:
    shards: int
    records: int
    seconds: float
    manifest_uri: str
    manifest_digest: str

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


def local_shard_count(spec: "BatchInferenceSpec") -> int:
    """spec.shards, else one per input file (this machine may list the input; the operator never does)."""
    if spec.shards is not None:
        return spec.shards
    return len(list_dataset(spec.input.uri, spec.input.format, spec.s3))


def run_batch_locally(
    spec: "BatchInferenceSpec", *, in_parallel: int | None = None, shards: int | None = None, cpus: int | None = None
) -> LocalBatchResult:
    """Run every shard (`in_parallel` at a time, default spec.parallelism), then write the manifest.

    Each process gets an equal share of the CPUs for its torch threads. The shards' JSON-lines events go to
    this process's stdout; a failed shard's one-line reason to its stderr.
    """
    if spec.model.uri is None:
        raise SlimServeError("spec.model: the model's URI must be resolved before a local run")
    total = shards or local_shard_count(spec)
    parallel = max(1, min(in_parallel or spec.parallelism, total))
    threads = max(1, (cpus or os.cpu_count() or 1) // parallel)
    spec_text = job_spec_text(spec.to_json())
    base_env = {key: value for key, value in os.environ.items() if key != BatchEnv.variable("status_target").name}
    base_env.update({entry["name"]: entry["value"] for entry in BatchEnv(batch_spec=spec_text, shards=total).to_env()})
    base_env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "slimserve.cli.main", "batch"]
    started = time.monotonic()
    failed: list[int] = []
    pending, running = list(range(total)), {}
    while pending or running:
        while pending and len(running) < parallel:
            index = pending.pop(0)
            env = {**base_env, BatchEnv.variable("shard_index").name: str(index)}
            running[index] = subprocess.Popen(command, env=env)
        index, process = _wait_any(running)
        del running[index]
        if process.returncode != 0:
            failed.append(index)
    seconds = time.monotonic() - started
    if failed:
        raise ShardsFailed(f"shards {', '.join(map(str, sorted(failed)))} of {total} failed (their reasons above); "
                           "run again to resume: finished parts are kept")
    run_id = local_run_id(spec_text, total)
    prefix = OutputPrefix(spec.output.uri, spec.s3)
    manifest = write_manifest_if_complete(prefix, run_id, total)
    if manifest is None:
        raise ShardsFailed(f"{spec.output.uri}: the parts of run {run_id} are not all there")
    return LocalBatchResult(total, manifest.records, seconds, manifest.uri, manifest.digest)


def _wait_any(running: dict[int, subprocess.Popen]) -> tuple[int, subprocess.Popen]:
    while True:
        for index, process in running.items():
            if process.poll() is not None:
                return index, process
        time.sleep(0.05)
