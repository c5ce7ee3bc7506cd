"""Restoring an artifact knows every quantized module kind, in a process that imported nothing else."""

import json
import subprocess
import sys
from pathlib import Path

import slimserve.quant

PACKAGE = Path(slimserve.quant.__file__).parent


def _kinds_declared_in_the_package() -> set[str]:
    kinds = set()
    for source in PACKAGE.glob("*.py"):
        for line in source.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith('kind = "'):
                kinds.add(stripped.split('"')[1])
    return kinds


def test_restore_knows_every_kind_without_other_imports():
    # A fresh interpreter: the test process has long imported every quant module through other tests.
    probe = "import json; from slimserve.quant import restore_quantization; from slimserve.quant.base import KINDS; print(json.dumps(sorted(KINDS)))"
    known = set(json.loads(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout))
    declared = _kinds_declared_in_the_package()
    assert "int8-embedding" in declared and len(declared) >= 7
    assert declared <= known, f"kinds a recipe may name but restore does not know: {sorted(declared - known)}"
