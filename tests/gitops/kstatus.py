"""kstatus, the status library of Flux and kpt (sigs.k8s.io/cli-utils/pkg/kstatus/status), as a command.

`kstatus/main.go` is built once into a cache outside the repository (`kstatus/build.sh`); `compute` feeds it
objects and returns what kstatus.Compute says of each: Current, InProgress, Failed or Terminating.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

BUILD_SCRIPT = Path(__file__).resolve().parent / "kstatus" / "build.sh"


def go_available() -> bool:
    return shutil.which("go") is not None or Path("/usr/local/go/bin/go").exists()


@cache
def binary() -> Path:
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True, timeout=600)
    return Path(out.stdout.strip().splitlines()[-1])


def compute(objects: list[dict[str, Any]] | dict[str, Any]) -> list[dict[str, str]]:
    """[{name, status, message}] for each object (a list, one object or a Kubernetes List), in order."""
    out = subprocess.run([str(binary())], input=json.dumps(objects), capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"kstatus failed ({out.returncode}): {out.stderr}")
    return [json.loads(line) for line in out.stdout.splitlines()]
