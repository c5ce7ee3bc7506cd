"""An output the compressor cannot write fails `slimserve compress` before its first step, as StorageError, not
after the whole run as InternalError. Tests run as root, so the places are ones root cannot write either: a
path through a regular file, a path under /proc (and, in tests/storage, a bucket that does not exist)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SPEC = {
    "model": {"uri": "builtin://digits-mlp"},
    "steps": [{"prune": {"method": "structured", "amount": 0.5, "finetuneEpochs": 1}}],
    "evaluation": {"threads": 1},
}


def _compress(tmp_path: Path, output: str, spec_extra: dict | None = None, **env: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({**SPEC, **(spec_extra or {}), "output": {"uri": output}}))
    environment = {**os.environ, "SLIMSERVE_TERMINATION_LOG": str(tmp_path / "termination-log"), **env}
    environment.pop("SLIMSERVE_JOB_SPEC", None)
    done = subprocess.run(
        [sys.executable, "-m", "slimserve.cli.main", "compress", "--progress", "json", "--spec", str(spec_file)],
        capture_output=True, text=True, env=environment, timeout=300,
    )
    return done, [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def _assert_failed_before_the_first_step(tmp_path: Path, done: subprocess.CompletedProcess, events: list[dict], *fragments: str):
    assert done.returncode == 1, done.stderr
    assert [e["event"] for e in events] == ["error"], events  # no progress line: not even the load began
    assert events[0]["reason"] == "StorageError"
    assert done.stderr.startswith("slimserve compress: StorageError: "), done.stderr
    assert (tmp_path / "termination-log").read_text().startswith("StorageError: ")
    for fragment in fragments:
        assert fragment in events[0]["message"], events[0]["message"]


def test_output_below_a_regular_file_fails_before_the_first_step(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    done, events = _compress(tmp_path, f"file://{tmp_path}/a-file/artifacts/slim")
    _assert_failed_before_the_first_step(tmp_path, done, events, f"{tmp_path}/a-file is a file, not a directory")


def test_output_on_a_claim_root_cannot_write_fails_before_the_first_step(tmp_path):
    # /proc takes no new directories, not even from root: a claim mounted there is unwritable.
    done, events = _compress(tmp_path, "pvc://models/slim", SLIMSERVE_PVC_ROOT="/proc")
    _assert_failed_before_the_first_step(tmp_path, done, events, "'pvc://models/slim': cannot write under /proc")


def test_output_that_is_a_foreign_directory_fails_before_the_first_step(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("someone else's")
    done, events = _compress(tmp_path, f"file://{tmp_path}/data")
    _assert_failed_before_the_first_step(tmp_path, done, events, "is not a SlimServe artifact")
    assert (tmp_path / "data" / "keep.txt").read_text() == "someone else's"
