"""checkov, the infrastructure-as-code scanner, in its own virtual environment outside the repository.

Its pinned dependencies conflict with the project's, so it lives in
${SLIMSERVE_CACHE:-~/.cache/slimserve}/tools/checkov-<version>/ and is installed there from PyPI when missing
(`python -m tests.helm.checkov` does that ahead of time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

VERSION = "3.3.30"


def tool_dir() -> Path:
    cache = Path(os.environ.get("SLIMSERVE_CACHE") or Path.home() / ".cache" / "slimserve")
    return cache / "tools" / f"checkov-{VERSION}"


def ensure_installed() -> Path:
    """The checkov executable, installing it first when missing (a minute or two, once)."""
    root = tool_dir()
    executable = root / "bin" / "checkov"
    done = root / ".installed"  # written last: a half-finished install is redone, not used
    if done.exists():
        return executable
    venv.EnvBuilder(with_pip=True, clear=True).create(root)  # scripts name their venv's path: build in place
    subprocess.run(
        [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"checkov=={VERSION}"],
        check=True, timeout=900,
    )
    done.write_text(VERSION)
    return executable


def scan(manifests: Path) -> dict[str, Any]:
    """checkov's JSON report of a directory of rendered Kubernetes manifests."""
    out = subprocess.run(
        [str(ensure_installed()), "--directory", str(manifests), "--framework", "kubernetes", "--output", "json",
         "--compact", "--skip-download"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "LOG_LEVEL": "WARNING", "BC_SKIP_MAPPING": "TRUE"},
    )
    if out.returncode not in (0, 1):  # 1: some check failed; anything else: checkov itself failed
        raise RuntimeError(f"checkov exited {out.returncode}: {out.stderr[-2000:]}")
    report = json.loads(out.stdout)
    return report[0] if isinstance(report, list) else report


if __name__ == "__main__":
    print(ensure_installed())
    sys.exit(0)
