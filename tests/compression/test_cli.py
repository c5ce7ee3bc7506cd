"""`slimserve compress`: one fast job as a subprocess (JSON lines, artifact), and bad inputs in-process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slimserve.api.compression_job import ArtifactRef, CompressionMetrics
from slimserve.artifacts import load_artifact
from slimserve.cli.compress import load_spec
from slimserve.cli.main import main

FAST_SPEC = {
    "model": {"uri": "builtin://digits-mlp"},
    "steps": [{"prune": {"method": "structured", "amount": 0.5, "finetuneEpochs": 1}}],
    "evaluation": {"threads": 1},
}


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "SLIMSERVE_TERMINATION_LOG": str(tmp_path / "termination-log"), **extra}
    env.pop("SLIMSERVE_JOB_SPEC", None)
    env.pop("OMP_WAIT_POLICY", None)
    return env


def test_subprocess_job_writes_a_verified_artifact_and_json_lines(tmp_path):
    manifest = {
        "apiVersion": "slimserve.io/v1alpha1", "kind": "CompressionJob", "metadata": {"name": "digits"},
        "spec": {**FAST_SPEC, "output": {"uri": f"file://{tmp_path}/ignored"}},
    }
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(manifest))
    output = tmp_path / "artifact"
    done = subprocess.run(
        [sys.executable, "-m", "slimserve.cli.main", "compress", "--spec", str(spec_file), "--output", f"file://{output}"],
        capture_output=True, text=True, env=_env(tmp_path), timeout=300,
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and 0.0 <= fractions[0] and fractions[-1] == 1.0
    assert {"step", "stepIndex", "stepsTotal", "fraction", "message"} <= set(progress[0])
    result = events[-1]
    assert result["event"] == "result" and set(result) == {"event", "artifact", "metrics"}
    artifact_ref = ArtifactRef.model_validate(result["artifact"])
    metrics = CompressionMetrics.model_validate(result["metrics"])
    assert metrics.to_json() == result["metrics"]  # exactly the status's camelCase shape
    assert artifact_ref.uri == f"file://{output}" and not (tmp_path / "ignored").exists()
    assert load_artifact(artifact_ref.uri).digest == artifact_ref.digest
    assert metrics.compressed.parameters < metrics.baseline.parameters
    assert not (tmp_path / "termination-log").exists()
    # OpenMP threads slept between calls, so the models timed side by side did not slow each other down.
    assert json.loads((output / "report.json").read_text())["speed"]["ompWaitPolicy"] == "PASSIVE"


def _run_cli(tmp_path, monkeypatch, capsys, spec: dict | str | None, *args: str) -> tuple[int, list[dict], str]:
    monkeypatch.setenv("SLIMSERVE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    monkeypatch.delenv("SLIMSERVE_JOB_SPEC", raising=False)
    argv = ["compress", "--progress", "json", *args]
    if spec is not None:
        spec_file = tmp_path / "spec.json"
        spec_file.write_text(spec if isinstance(spec, str) else json.dumps(spec))
        argv += ["--spec", str(spec_file)]
    code = main(argv)
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    return code, events, captured.err


def _assert_one_line_failure(code, events, err, tmp_path, *fragments):
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0]
    assert events[-1]["event"] == "error" and events[-1]["reason"]
    assert fragments[0] in (tmp_path / "termination-log").read_text()


def test_invalid_fields_are_reported_one_per_field(tmp_path, monkeypatch, capsys):
    spec = {**FAST_SPEC, "steps": [{"prune": {"amount": 1.5}}, {"quantize": {"method": "int9"}}], "output": {"uri": "file:///tmp/x"}}
    code, events, err = _run_cli(tmp_path, monkeypatch, capsys, spec)
    assert code == 2
    _assert_one_line_failure(code, events, err, tmp_path, "spec.steps[0].prune.amount: Input should be less than 1",
                             "spec.steps[1].quantize.method")
    assert events[-1]["reason"] == "InvalidSpec"


def test_quantize_before_prune_is_an_invalid_order(tmp_path, monkeypatch, capsys):
    spec = {**FAST_SPEC, "steps": [{"quantize": {"method": "int8-dynamic"}}, {"prune": {"amount": 0.5}}], "output": {"uri": "file:///tmp/x"}}
    code, events, err = _run_cli(tmp_path, monkeypatch, capsys, spec)
    _assert_one_line_failure(code, events, err, tmp_path, "spec.steps: quantize must be the last step")


def test_invalid_output_override_names_the_option(tmp_path, monkeypatch, capsys):
    spec = {**FAST_SPEC, "output": {"uri": f"file://{tmp_path}/out"}}
    code, events, err = _run_cli(tmp_path, monkeypatch, capsys, spec, "--output", "ftp://elsewhere/x")
    _assert_one_line_failure(code, events, err, tmp_path, "--output: String should match pattern")


def test_spec_from_the_environment_and_missing_spec(tmp_path, monkeypatch, capsys):
    code, events, err = _run_cli(tmp_path, monkeypatch, capsys, None)
    _assert_one_line_failure(code, events, err, tmp_path, "--spec FILE or the environment variable SLIMSERVE_JOB_SPEC")
    monkeypatch.setenv("SLIMSERVE_JOB_SPEC", json.dumps({**FAST_SPEC, "output": {"uri": f"file://{tmp_path}/env"}}))
    assert main(["compress", "--progress", "json"]) == 0
    assert load_artifact(f"file://{tmp_path}/env").manifest.family == "digits-mlp"


def test_unreadable_spec_file(tmp_path, monkeypatch, capsys):
    code, events, err = _run_cli(tmp_path, monkeypatch, capsys, "model: [unclosed")
    _assert_one_line_failure(code, events, err, tmp_path, "not valid YAML or JSON")


def test_student_larger_than_teacher(tmp_path, monkeypatch, capsys):
    spec = {**FAST_SPEC, "steps": [{"distill": {"student": {"numLayers": 4}}}], "output": {"uri": f"file://{tmp_path}/out"}}
    code, events, err = _run_cli(tmp_path, monkeypatch, capsys, spec)
    _assert_one_line_failure(code, events, err, tmp_path, "spec.steps[0].distill.student.numLayers: 4 is more than the teacher's 1 layers")
    assert not (tmp_path / "out").exists()


def test_missing_dataset(tmp_path, monkeypatch, capsys):
    spec = {**FAST_SPEC, "evaluation": {"threads": 1, "dataset": {"uri": f"file://{tmp_path}/nope.npz"}},
            "output": {"uri": f"file://{tmp_path}/out"}}
    code, events, err = _run_cli(tmp_path, monkeypatch, capsys, spec)
    _assert_one_line_failure(code, events, err, tmp_path, "evaluation.dataset.uri", "no such file")
    assert events[-1]["reason"] == "MissingDataset"


def test_corrupt_model_file(tmp_path, monkeypatch, capsys):
    from slimserve.models.minilm import minilm_files_dir

    model_dir = tmp_path / "bert"
    model_dir.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(minilm_files_dir() / name, model_dir / name)
    (model_dir / "model.safetensors").write_bytes((minilm_files_dir() / "model.safetensors").read_bytes()[:4096])
    spec = {**FAST_SPEC, "model": {"uri": f"file://{model_dir}"}, "output": {"uri": f"file://{tmp_path}/out"}}
    code, events, err = _run_cli(tmp_path, monkeypatch, capsys, spec)
    _assert_one_line_failure(code, events, err, tmp_path, "model.safetensors is corrupt or truncated")
    assert not (tmp_path / "out").exists()


def test_tampered_artifact_as_model_source(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLIMSERVE_JOB_SPEC", json.dumps({**FAST_SPEC, "output": {"uri": f"file://{tmp_path}/first"}}))
    assert main(["compress", "--progress", "json"]) == 0
    capsys.readouterr()
    weights = tmp_path / "first" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    spec = {**FAST_SPEC, "model": {"uri": f"file://{tmp_path}/first"}, "output": {"uri": f"file://{tmp_path}/second"}}
    code, events, err = _run_cli(tmp_path, monkeypatch, capsys, spec)
    _assert_one_line_failure(code, events, err, tmp_path, "does not match the manifest")
    assert events[-1]["reason"] == "DigestMismatch"


@pytest.mark.parametrize(
    "uri, fragment",
    [("builtin://resnet", "unknown builtin model"), ("gs://models/x", "spec.model.uri: String should match pattern")],
)
def test_unknown_models(tmp_path, monkeypatch, capsys, uri, fragment):
    spec = {**FAST_SPEC, "model": {"uri": uri}, "output": {"uri": f"file://{tmp_path}/out"}}
    code, events, err = _run_cli(tmp_path, monkeypatch, capsys, spec)
    _assert_one_line_failure(code, events, err, tmp_path, fragment)


def _multi_document_file(tmp_path: Path) -> Path:
    """Two CompressionJobs and the ModelService that serves one, as the examples are written."""
    def job(name: str) -> dict:
        return {"apiVersion": "slimserve.io/v1alpha1", "kind": "CompressionJob", "metadata": {"name": name},
                "spec": {**FAST_SPEC, "output": {"uri": f"file://{tmp_path}/{name}"}}}

    service = {"apiVersion": "slimserve.io/v1alpha1", "kind": "ModelService", "metadata": {"name": "digits"},
               "spec": {"model": {"compressionJobRef": {"name": "second"}}}}
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump_all([job("first"), service, job("second")]))
    return path


def test_multi_document_file_runs_the_job_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLIMSERVE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    path = _multi_document_file(tmp_path)
    assert main(["compress", "--progress", "json", "--spec", str(path), "--name", "second"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["artifact"]["uri"] == f"file://{tmp_path}/second"
    assert load_artifact(result["artifact"]["uri"]).manifest.family == "digits-mlp"
    assert not (tmp_path / "first").exists()


@pytest.mark.parametrize(
    "documents, name, fragment",
    [
        ("both", None, "2 CompressionJobs (first, second); choose one with --name"),
        ("both", "third", "--name third: no CompressionJob of that name"),
        ("service", None, "no CompressionJob in the file (found: ModelService)"),
        ("bare", "first", "--name first: "),
    ],
)
def test_multi_document_file_without_one_job_to_run(tmp_path, monkeypatch, capsys, documents, name, fragment):
    path = _multi_document_file(tmp_path)
    if documents == "service":
        path.write_text(yaml.safe_dump_all([d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "ModelService"]))
    elif documents == "bare":
        path.write_text(yaml.safe_dump(FAST_SPEC))
    code, events, err = _run_cli(tmp_path, monkeypatch, capsys, path.read_text(), *(["--name", name] if name else []))
    assert code == 2
    _assert_one_line_failure(code, events, err, tmp_path, fragment)
    assert events[-1]["reason"] == "InvalidSpec"


def test_example_with_a_service_is_a_valid_spec(tmp_path, monkeypatch, capsys):
    # The CompressionJob of examples/minilm.yaml is read (a wrong --output proves the spec got that far).
    example = Path(__file__).resolve().parents[2] / "examples" / "minilm.yaml"
    code, events, err = _run_cli(tmp_path, monkeypatch, capsys, example.read_text(), "--output", "ftp://elsewhere/x")
    _assert_one_line_failure(code, events, err, tmp_path, "--output: String should match pattern")
    assert load_spec(str(example)).model.uri == "builtin://minilm-l6"
