"""One meaning per name: names that once stood for two contracts in two modules stay defined once, and no
two modules of a package differ only by a plural."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "operator" / "slimserve"
ONCE = ("ServedModel", "InvalidSpec", "resolve_uri", "parse_spec", "transition_events")


def top_level_definitions() -> dict[str, list[str]]:
    defined: dict[str, list[str]] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                defined.setdefault(node.name, []).append(str(path.relative_to(SOURCE)))
    return defined


@pytest.mark.parametrize("name", ONCE)
def test_defined_by_one_module_at_most(name: str):
    modules = top_level_definitions().get(name, [])
    assert len(modules) <= 1, f"{name} means two things: {modules}"


def test_no_module_is_the_plural_of_its_neighbour():
    for package in [SOURCE, *(p for p in SOURCE.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        stems = {p.stem for p in package.glob("*.py")}
        assert not {s for s in stems if f"{s}s" in stems}, f"{package}: {sorted(stems)}"
