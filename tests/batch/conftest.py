"""Datasets for the batch tests, and a BatchInference's pod (as the operator builds it) run as a local process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from slimserve.api.batch_inference import BatchInferenceSpec
from slimserve.api.workload import BatchEnv
from slimserve.artifacts.cache import cache_root
from slimserve.controller.builders.batch_inference import build_job
from slimserve.controller.config import OperatorConfig
from slimserve.data import builtin_sentences
from slimserve.models.digits import digits_data
from tests.storage.conftest import s3_env, s3_server  # noqa: F401  (the MinIO fixtures)

DIGITS = 90  # held-out digits scored end to end
# This machine's cache, where the builtin digits models' trained weights are (a fresh cache trains them first).
MACHINE_CACHE = cache_root()


@pytest.fixture(scope="session")
def digits() -> np.ndarray:
    return digits_data().x_test[:DIGITS].astype(np.float32)


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return list(builtin_sentences("eval"))[:48]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def digits_spec(input_uri: str, output_uri: str, **spec) -> BatchInferenceSpec:
    return BatchInferenceSpec.model_validate(
        {"model": {"uri": "builtin://digits-cnn"}, "input": {"uri": input_uri}, "output": {"uri": output_uri}, **spec}
    )


@dataclass
class PodProcess:
    """One index of the BatchInference's Indexed Job, as a process of this machine."""

    index: int
    process: subprocess.Popen
    stdout: Path
    stderr: Path

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.read_text().splitlines() if line.startswith("{")]

    def wait_for_event(self, kind: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [event for event in self.events() if event["event"] == kind]
            if found:
                return found[0]
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"shard {self.index}: no {kind} event; stderr: {self.stderr.read_text()[-2000:]}")

    def finish(self, timeout: float = 180) -> int:
        code = self.process.wait(timeout=timeout)
        assert code == 0, f"shard {self.index} exited {code}: {self.stderr.read_text()[-3000:]}"
        return code


def pod_container(spec: BatchInferenceSpec, *, name: str = "scores", namespace: str = "team-a", generation: int = 1) -> dict:
    """The batch container of the Job the operator builds for this spec."""
    job = build_job(name=name, namespace=namespace, generation=generation, spec=spec, config=OperatorConfig(),
                    model_uri=spec.model.uri)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def start_pod(container: dict, index: int, root: Path, *, with_status: bool = False, extra_env: dict | None = None) -> PodProcess:
    """Run the container's command for shard `index` with its environment: the paths it names (claims, cache,
    scratch) as folders under `root`, shared by all shards as the claims are on a cluster, and Kubernetes'
    JOB_COMPLETION_INDEX. Without `with_status` the status target is dropped (no API server here)."""

    def local(value: str) -> str:
        return str(root / value.lstrip("/")) if value.startswith("/") else value

    env = {item["name"]: local(item["value"]) for item in container["env"] if "value" in item}
    if not with_status:
        env.pop(BatchEnv.variable("status_target").name)
    env.update(
        **{BatchEnv.variable("shard_index").name: str(index),
           # the digits model's trained weights, from this machine's cache
           BatchEnv.variable("cache").name: str(MACHINE_CACHE)},
        PATH=os.environ["PATH"],
        OMP_NUM_THREADS="1",
        **(extra_env or {}),
    )
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    run = time.monotonic_ns()  # a re-run's events apart from the first run's
    stdout, stderr = logs / f"shard-{index}-{run}.out", logs / f"shard-{index}-{run}.err"
    executable = Path(sys.executable).parent / container["command"][0]
    with stdout.open("a") as out, stderr.open("a") as err:
        process = subprocess.Popen([str(executable), *container["command"][1:], *container["args"]], env=env, stdout=out, stderr=err)
    return PodProcess(index, process, stdout, stderr)
