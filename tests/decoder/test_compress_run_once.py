"""`slimserve run -f examples/tiny-lm.yaml --once`: compress builtin://tiny-lm to int4 within its perplexity budget,
serve the artifact, complete a prompt through the server and print it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.local.test_run import REPO, run_once

EXAMPLE = REPO / "examples" / "tiny-lm.yaml"


@pytest.mark.slow
def test_tiny_lm_example_compresses_serves_and_completes_a_prompt(tmp_path: Path):
    result, workdir = run_once(EXAMPLE, tmp_path)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # the metrics table: perplexity and tokens per second, before and after
    assert "perplexity" in out and "tokens/s (1" in out  # (the header may wrap)
    change = re.search(r"compressed vs.*?\(([+-]\d+\.\d+)%\)", out, re.S)
    assert change and float(change.group(1)) <= 6.0, out  # within maxRelativeIncrease 0.06
    # the artifact is the int4 one, written where pvc://models maps to, within its budget
    manifest = json.loads((workdir / "pvc/models/tiny-lm-int4/manifest.json").read_text())
    assert manifest["family"] == "decoder" and manifest["within_budget"] is True
    assert "int4-weight-only-linear" in {entry["kind"] for entry in manifest["quantization"]["modules"].values()}
    # the self-check: one greedy completion of the prompt, the same over /v1/completions and OIP generate
    assert "/v1/completions" in out and "/generate" in out
    assert "self-check: complete 'def fibonacci(n):\\n'" in out
    printed = out.split("self-check: complete", 1)[1].splitlines()[1:]
    assert printed and printed[0].startswith("def fibonacci(n):"), out
    assert len("\n".join(printed).strip()) > len("def fibonacci(n):")  # the model wrote something after the prompt
