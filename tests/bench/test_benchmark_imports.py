"""Every name a benchmark imports from another benchmark module exists there. Benchmarks import their siblings
inside the functions that need them (some only run where a GPU or a load generator is), so a renamed helper
would otherwise surface only when that part runs, on the one machine that can run it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _local_modules() -> set[str]:
    names = {path.stem for path in BENCHMARKS.glob("*.py")}
    return names | {f"loadgen.{path.stem}" for path in (BENCHMARKS / "loadgen").glob("*.py")} | {"loadgen"}


def _sibling_imports() -> list[tuple[str, str, str]]:
    """(benchmark file, module, name) for every `from <benchmark module> import name`, at any depth."""
    local = _local_modules()
    found = []
    for path in sorted(BENCHMARKS.glob("*.py")) + sorted((BENCHMARKS / "loadgen").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in local:
                found += [(path.relative_to(BENCHMARKS).as_posix(), node.module, alias.name) for alias in node.names]
    return found


def test_the_benchmarks_import_their_siblings():
    assert {(f, m) for f, m, _ in _sibling_imports()} >= {("gpu.py", "serving"), ("gpu.py", "loadgen.measured")}


@pytest.mark.parametrize(("benchmark", "module", "name"), _sibling_imports(),
                         ids=[f"{benchmark}:{module}.{name}" for benchmark, module, name in _sibling_imports()])
def test_each_name_a_benchmark_imports_from_a_sibling_exists(benchmark, module, name):
    imported = importlib.import_module(module)  # tests/bench/conftest.py puts benchmarks/ on sys.path
    assert hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}") is not None, (
        f"{benchmark} imports {name} from {module}, which has no such name")
