"""Compression at scale: the accuracy-budget search's time box, onBudgetMiss (fail / keepBest, and the
servers' refusal of an artifact outside its budget), and runs killed mid-way that resume from the last
finished step's checkpoint."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from slimserve.artifacts import ArtifactError, load_artifact
from slimserve.artifacts.storage import local_path
from slimserve.compression import compress
from slimserve.compression.checkpoint import INDEX_NAME, Checkpoints, FinishedStep, LocalStore, checkpoint_dir, checkpoint_store, run_key
from slimserve.compression.errors import BudgetExceeded
from slimserve.models import load_servable
from tests.storage.conftest import s3_env, s3_server  # noqa: F401  (MinIO for the s3:// output)

# Removing 90% of the CNN's channels costs accuracy even after a short fine-tuning, and maxDrop 0 allows none:
# the search would try all four amounts (0.9, then 0.675, 0.45, 0.225), each fine-tuned for three epochs,
# which no machine does in one second; the time box stops it after the candidate running when it expires.
HOPELESS_PRUNE = [{"prune": {"amount": 0.9, "finetuneEpochs": 3}}]
TIME_BOXED = {"maxDrop": 0.0, "maxDurationSeconds": 1}
ALL_CANDIDATES = 4


def test_time_box_ends_a_hopeless_search_early_and_fails(tmp_path, make_spec, sink):
    spec = make_spec(tmp_path / "out", steps=HOPELESS_PRUNE, evaluation=dict(TIME_BOXED))
    with pytest.raises(BudgetExceeded, match="before evaluation.maxDurationSeconds ran out; tried: amount 0.9, fine-tuned with adam -> ") as raised:
        compress(spec, [sink])
    assert 1 <= str(raised.value).count(" -> ") < ALL_CANDIDATES
    assert sink.errors and sink.errors[0][0] == "AccuracyBudgetExceeded"
    assert not (tmp_path / "out").exists()


def test_keep_best_writes_the_artifact_outside_its_budget_and_servers_refuse_it_unless_allowed(tmp_path, make_spec, sink):
    spec = make_spec(tmp_path / "out", steps=HOPELESS_PRUNE, evaluation={**TIME_BOXED, "onBudgetMiss": "keepBest"})
    outcome = compress(spec, [sink])
    assert outcome.metrics.within_budget is False and outcome.metrics.to_json()["withinBudget"] is False
    assert "outside the accuracy budget" in outcome.metrics.steps[0].note
    artifact = load_artifact(outcome.artifact.uri)
    assert artifact.manifest.within_budget is False
    report = json.loads((artifact.path / "report.json").read_text())
    assert report["withinBudget"] is False
    tried = [c for c in report["candidates"] if c["step"] != "baseline"]
    assert 1 <= len(tried) < ALL_CANDIDATES
    best = max(tried, key=lambda c: c["metric"])
    assert outcome.metrics.compressed.metric == best["metric"] and best["accepted"]
    assert any(f"keeping the best, {best['label']}" in event.message for event in sink.events)

    with pytest.raises(ArtifactError, match="missed the accuracy budget") as refused:
        load_servable(outcome.artifact.uri)
    assert refused.value.reason == "OutsideBudget"
    servable = load_servable(outcome.artifact.uri, allow_outside_budget=True)
    assert servable.info.digest == outcome.artifact.digest


# ---- checkpoints and resuming ---------------------------------------------------------------------------

# Float steps only (nothing to compile), with fine-tuning, which draws random numbers: a resumed step must
# draw the same ones. The second step's fine-tuning is the window the first run is killed in.
TWO_STEPS = {
    "model": {"uri": "builtin://digits-mlp"},
    "steps": [{"prune": {"amount": 0.5, "finetuneEpochs": 1}}, {"prune": {"amount": 0.3, "finetuneEpochs": 4}}],
    "evaluation": {"threads": 1, "maxDrop": 1.0},
}


class Output:
    """Where a run writes its artifact, and what a test reads back of it there: a folder, or an S3 prefix."""

    def __init__(self, uri: str, s3_server=None):
        self.uri, self.server = uri, s3_server
        self.spec = {"output": {"uri": uri}, **({"s3": {"endpoint": s3_server.endpoint}} if s3_server else {})}

    def _keys(self, prefix: str) -> list[str]:
        listed = self.server.client().list_objects_v2(Bucket=self.server.bucket, Prefix=prefix)
        return [item["Key"] for item in listed.get("Contents", [])]

    def checkpoint_index_exists(self) -> bool:
        store = checkpoint_store(self.uri)
        if self.server is None:
            return (store.directory / INDEX_NAME).is_file()
        return bool(self._keys(store.uri.partition(f"{self.server.bucket}/")[2] + "/" + INDEX_NAME))

    def checkpoint_exists(self) -> bool:
        store = checkpoint_store(self.uri)
        if self.server is None:
            return store.directory.exists()
        return bool(self._keys(store.uri.partition(f"{self.server.bucket}/")[2] + "/"))

    def artifact_exists(self) -> bool:
        if self.server is None:
            return local_path(self.uri).exists()
        return bool(self._keys(self.uri.partition(f"{self.server.bucket}/")[2] + "/"))

    def load(self):
        from slimserve.api.storage import S3Spec

        return load_artifact(self.uri, s3=S3Spec(endpoint=self.server.endpoint) if self.server else None)


@pytest.fixture(params=["file", "s3"])
def output(request, tmp_path) -> Output:
    if request.param == "file":
        return Output(f"file://{tmp_path / 'out'}")
    server = request.getfixturevalue("s3_env")  # credentials in the environment, as a pod gets them
    return Output(f"s3://{server.bucket}/resume-{uuid.uuid4().hex[:8]}/out", server)


def _compress_process(tmp_path, output: Output):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({**TWO_STEPS, **output.spec}))
    env = {**os.environ, "SLIMSERVE_TERMINATION_LOG": str(tmp_path / "termination-log"), "SLIMSERVE_JOB_GENERATION": "3"}
    return subprocess.Popen(
        [sys.executable, "-m", "slimserve.cli.main", "compress", "--spec", str(spec_file), "--progress", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The same spec's artifact from a run that was not killed: made once, for every kind of output."""
    from tests.compression.conftest import RecordingSink, job_spec

    spec = job_spec(tmp_path_factory.mktemp("uninterrupted") / "whole", model=TWO_STEPS["model"]["uri"],
                    **{k: v for k, v in TWO_STEPS.items() if k != "model"})
    return load_artifact(compress(spec, [RecordingSink()]).artifact.uri)


def _kill_as_step_begins(process: subprocess.Popen, step_index: int, timeout_s: float = 240) -> None:
    """SIGKILL `process` the moment its progress stream reports step `step_index` begun (the steps before it
    are checkpointed by then). Read from the stream, not polled from storage: a poll's delay is of the order of
    a short step on a fast CPU, so the step meant to be cut off could finish and be checkpointed first."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put("")  # the stream ended

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no step {step_index} within {timeout_s}s") from None
        assert line, f"the run ended before step {step_index}: {process.stderr.read()}"
        event = json.loads(line)
        if event["event"] == "progress" and event["stepIndex"] == step_index:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return


def test_a_run_killed_after_its_first_step_resumes_from_the_checkpoint_to_the_same_weights(tmp_path, output, uninterrupted):
    killed = _compress_process(tmp_path, output)
    _kill_as_step_begins(killed, step_index=2)  # the second prune's fine-tuning had just begun
    assert output.checkpoint_index_exists()  # the first prune (with its fine-tuning) was checkpointed
    assert not output.artifact_exists(), "the run was killed before its artifact was written"

    resumed = _compress_process(tmp_path, output)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    step_indexes = {e["stepIndex"] for e in events if e["event"] == "progress"}
    assert step_indexes == {0, 2, 3}  # load, the second prune, write: the first prune was not run again
    assert all(e.get("resumedFrom") == "spec.steps[0] prune/structured" for e in events if e["event"] == "progress"
               and e["step"] != "load")
    assert not output.checkpoint_exists()  # the artifact makes the checkpoint obsolete

    after_resume, whole = output.load(), uninterrupted
    # The artifact's own digest covers the speeds measured at the end (and the time written), which no two
    # runs share; what the steps produced is compared: the weights file (its sha256) and the recipe.
    assert after_resume.manifest.files["weights.safetensors"] == whole.manifest.files["weights.safetensors"]
    assert after_resume.manifest.recipe == whole.manifest.recipe
    report = json.loads((after_resume.path / "report.json").read_text())
    assert report["resumedFrom"] == "spec.steps[0] prune/structured"
    assert json.loads((whole.path / "report.json").read_text())["resumedFrom"] is None


@pytest.fixture
def checkpointed(tmp_path, mlp_context, make_spec):
    """A checkpoint of one finished (float) step of a digits-mlp run, and the spec it belongs to."""
    original, _ = mlp_context
    spec = make_spec(tmp_path / "out", model="builtin://digits-mlp")
    directory = checkpoint_dir(spec.output.uri)
    Checkpoints(LocalStore(directory), run_key(spec, 1)).save(0, FinishedStep("prune/structured", original, 0.9, "amount 0.5"), [], True)
    return spec, directory, original


def test_a_checkpoint_resumes_only_for_its_own_spec_generation_and_digests(checkpointed):
    spec, directory, original = checkpointed
    resumed = Checkpoints(LocalStore(directory), run_key(spec, 1)).resume(original, len(spec.steps))
    assert resumed is not None and resumed.resumed_from == "spec.steps[0] prune/structured"
    restored = resumed.steps[0].state.model.state_dict()
    assert all((restored[k] == v).all() for k, v in original.model.state_dict().items())

    assert Checkpoints(LocalStore(directory), run_key(spec, 2)).resume(original, len(spec.steps)) is None  # a newer generation
    other = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"max_drop": 0.5})})
    assert Checkpoints(LocalStore(directory), run_key(other, 1)).resume(original, len(spec.steps)) is None  # another spec
    weights = directory / "step-0.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert Checkpoints(LocalStore(directory), run_key(spec, 1)).resume(original, len(spec.steps)) is None  # digest mismatch


def test_a_quantized_step_is_checkpointed_as_its_tensors_and_recipe(tmp_path, mlp_context, make_spec):
    from slimserve.api.steps import QuantizeConfig
    from slimserve.compression.quantize_step import quantize

    original, context = mlp_context
    quantized = quantize(original, QuantizeConfig(method="int8-dynamic"), context)
    spec = make_spec(tmp_path / "out", model="builtin://digits-mlp", steps=[{"quantize": {"method": "int8-dynamic"}}])
    checkpoints = Checkpoints(checkpoint_store(spec.output.uri), run_key(spec, None))
    checkpoints.save(0, FinishedStep("quantize/int8-dynamic", quantized, 0.97, "int8-dynamic"), [], False)

    resumed = Checkpoints(checkpoint_store(spec.output.uri), run_key(spec, None)).resume(original, len(spec.steps))
    restored = resumed.steps[0].state
    assert restored.quantization == quantized.quantization and resumed.within_budget is False
    (before, recipe), (after, restored_recipe) = quantized.tensors(), restored.tensors()
    assert restored_recipe == recipe and before.keys() == after.keys()
    assert all((before[k] == after[k]).all() for k in before)
