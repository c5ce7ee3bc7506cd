"""The Helm chart under test, rendered with the real Helm CLI (built with the test cluster's binaries)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.controlplane import CommandError, ensure_built

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "slimserve"
RELEASE = "slimserve"
RELEASE_NAMESPACE = "slimserve-system"


@cache
def bin_dir() -> Path:
    return ensure_built()


def kube_version() -> str:
    """The version of the test cluster's Kubernetes (helm template otherwise assumes an old default)."""
    return re.search(r"k8s-v(\d+\.\d+\.\d+)", str(bin_dir())).group(1)


@cache
def _helm_home() -> Path:
    return Path(tempfile.mkdtemp(prefix="slimserve-helm-"))


def helm(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run helm (offline: private config, cache and data directories)."""
    home = _helm_home()
    environment = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        **(env or {}),
    }
    argv = [str(bin_dir() / "helm"), *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=environment)
    if check and out.returncode != 0:
        raise CommandError(out.returncode, argv, out.stdout, out.stderr)
    return out


def values_file(values: dict[str, Any] | None, directory: Path | None = None) -> Path:
    directory = directory or _helm_home()
    fd, path = tempfile.mkstemp(suffix=".yaml", dir=directory)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(values or {}, f)
    return Path(path)


def template(values: dict[str, Any] | None = None, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return helm(
        "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--kube-version", kube_version(),
        "--values", str(values_file(values)), *extra, check=check,
    )


def render(values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
    """The chart's objects (templates only; add --include-crds for the CRDs)."""
    return [doc for doc in yaml.safe_load_all(template(values, *extra).stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = find(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "operator")


def operator_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(objects, "ConfigMap")["data"]["operator.yaml"])
