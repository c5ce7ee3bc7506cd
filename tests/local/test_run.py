"""`slimserve run`: the quick start end to end as a user runs it, and the mistakes a user can make."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from slimserve.local.plan import PlanError, plan_from_file
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples/quickstart.yaml"


def slimserve_run(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slimserve.cli.main", "run", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    error_lines = [line for line in output.splitlines() if line.startswith("slimserve run:")]
    assert len(error_lines) == 1, output
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]


def run_once(manifest: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """`slimserve run -f MANIFEST --once` on free ports: (the finished process, its workdir)."""
    workdir = tmp_path / "work"
    result = slimserve_run(
        "-f", str(manifest), "--once", "--workdir", str(workdir),
        "--http-port", str(free_port()), "--grpc-port", str(free_port()), cwd=tmp_path,
    )
    return result, workdir


@pytest.mark.slow
def test_quickstart_compresses_serves_and_answers(tmp_path: Path):
    result, workdir = run_once(QUICKSTART, tmp_path)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # The metrics table: baseline against compressed, with the ratios.
    assert "baseline (fp32)" in out and "compressed vs baseline" in out
    assert re.search(r"\d+\.\d\dx smaller", out)
    # The self-check went through both protocols and classified the held-out digit it names.
    label = int(re.search(r"sent a held-out 8x8 digit \(label (\d)\)", out).group(1))
    rest = int(re.search(r"REST answer: logits: predicted digit (\d)", out).group(1))
    over_grpc = int(re.search(r"gRPC answer: logits: predicted digit (\d)", out).group(1))
    assert rest == over_grpc == label
    # The report and the picture sit in the artifact, at the local path pvc://models maps to.
    artifact = workdir / "pvc/models/digits-slim"
    report = json.loads((artifact / "report.json").read_text())
    assert report and (artifact / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (artifact / "manifest.json").exists()
    # Each speed in the table comes with its spread over the rounds, as report.json has it (and a warning when
    # the rounds spread too far to be trusted).
    baseline = next(c for c in report["candidates"] if c["step"] == "baseline")
    row = next(line for line in out.splitlines() if "baseline (fp32)" in line)
    assert f"{baseline['latencyP50Ms']:.3f} ±{baseline['latencySpread'] / 2:.0%}" in row, out
    assert "interquartile range" in out
    assert ("WARNING: speed figures not to be trusted" in out) == (not report["speed"]["trusted"])


def test_missing_file_is_one_line(tmp_path: Path):
    result = slimserve_run("-f", "nope.yaml", "--once", cwd=tmp_path)
    assert_one_line_error(result, "nope.yaml", "file not found")


def test_invalid_manifest_names_the_field(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICKSTART.read_text().replace("amount: 0.5", "amount: 1.5"))
    result = slimserve_run("-f", str(bad), "--once", cwd=tmp_path)
    assert_one_line_error(result, "spec.steps[0].prune.amount")


def test_unknown_model_source_is_one_line(tmp_path: Path):
    bad = tmp_path / "unknown.yaml"
    bad.write_text(QUICKSTART.read_text().replace("builtin://digits-cnn", "builtin://no-such-model"))
    result = slimserve_run("-f", str(bad), "--once", "--workdir", str(tmp_path / "w"),
                           "--http-port", str(free_port()), "--grpc-port", str(free_port()), cwd=tmp_path)
    assert_one_line_error(result, "no-such-model")


def test_port_in_use_is_one_line_and_fails_before_compressing(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = slimserve_run("-f", str(QUICKSTART), "--once", "--workdir", str(tmp_path / "w"),
                               "--http-port", str(port), "--grpc-port", str(free_port()), cwd=tmp_path, timeout=60)
    assert_one_line_error(result, f"port {port}", "--http-port")
    assert "CompressionJob" not in result.stdout


def test_service_referring_to_a_missing_job(tmp_path: Path):
    bad = tmp_path / "orphan.yaml"
    bad.write_text(QUICKSTART.read_text().replace("name: digits-slim\n  batching", "name: other-job\n  batching"))
    result = slimserve_run("-f", str(bad), "--once", cwd=tmp_path)
    assert_one_line_error(result, "other-job")



def with_service_field(tmp_path: Path, field: str, value: str) -> Path:
    guarded = tmp_path / f"{field}.yaml"
    text = QUICKSTART.read_text()
    assert text.count("\n  batching:") == 1  # the ModelService's
    guarded.write_text(text.replace("\n  batching:", f"\n  {field}: {value}\n  batching:"))
    return guarded


def test_tls_is_refused_naming_the_field_before_compressing(tmp_path: Path):
    result = slimserve_run("-f", str(with_service_field(tmp_path, "tls", "{secretName: digits-tls}")), "--once",
                           "--workdir", str(tmp_path / "w"), cwd=tmp_path, timeout=120)
    assert_one_line_error(result, "ModelService digits: spec.tls is not served by slimserve run",
                          "slimserve serve --tls-dir DIR")
    assert "CompressionJob" not in result.stdout


def test_a_canary_is_refused_naming_the_field(tmp_path: Path):
    path = with_service_field(tmp_path, "canary", "{model: {uri: 'builtin://digits-cnn'}, trafficPercent: 20}")
    with pytest.raises(PlanError, match=r"ModelService digits: spec\.canary is not served by slimserve run "
                                         r"\(splitting traffic .*slimserve serve URI for the candidate"):
        plan_from_file(path)


def test_auth_is_refused_naming_the_field(tmp_path: Path):
    path = with_service_field(tmp_path, "auth", "{mode: apiKeys, apiKeysSecret: {name: digits-keys}}")
    with pytest.raises(PlanError, match=r"ModelService digits: spec\.auth is not served by slimserve run .*"
                                         r"slimserve serve --auth-mode apiKeys --auth-api-keys-dir DIR"):
        plan_from_file(path)
