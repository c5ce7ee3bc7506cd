"""The package map of docs/architecture.md, enforced on the code: allowed imports, no cycles.

Every module under operator/slimserve is parsed with `ast`; every import in it (module level, in functions,
under TYPE_CHECKING; relative ones resolved) is checked against the table the doc holds, which is the only
place the rules are written.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "operator"
DOC = ROOT / "docs" / "architecture.md"
TOP = "slimserve"


@dataclass
class Rules:
    allowed: dict[str, set[str]]  # package -> packages or modules (relative to slimserve) it may import
    exceptions: dict[str, set[str]] = field(default_factory=dict)  # module -> what it may import besides


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. slimserve.models.loading
    target: str  # imported module, e.g. slimserve.quant
    where: str  # file:line


def _names(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


def _table(markdown: str, heading: str) -> list[list[str]]:
    """Rows (cells) of the first table under `## heading`, header and separator left out."""
    section = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    if section is None:
        raise ValueError(f"no section '## {heading}'")
    rows = [line.strip().strip("|").split("|") for line in section.group(1).splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row] for row in rows[2:]]


def parse_rules(markdown: str) -> Rules:
    allowed = {}
    for row in _table(markdown, "Packages"):
        (package,) = _names(row[0])
        allowed[package] = _names(row[-1])
    exceptions = {}
    for row in _table(markdown, "Temporary exceptions"):
        (module,) = _names(row[0])
        exceptions[module] = _names(row[1])
    return Rules(allowed, exceptions)


def modules_under(source: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under `source`/slimserve (a package is its __init__)."""
    modules = {}
    for path in sorted((source / TOP).rglob("*.py")):
        parts = path.relative_to(source).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(modules: dict[str, Path], source: Path) -> list[Import]:
    """Every import of a slimserve module by a slimserve module, resolved to the module it loads."""
    found = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # `from pkg import mod` loads pkg.mod; `from mod import name` loads mod
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.append(Import(name, target, f"{path.relative_to(source)}:{node.lineno}"))
    return found


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else TOP


def _relative(module: str) -> str:
    return module.removeprefix(TOP + ".")


def _covers(entries: set[str], target: str) -> bool:
    relative = _relative(target)
    return any(relative == entry or relative.startswith(entry + ".") for entry in entries)


def violations(imports: list[Import], rules: Rules) -> list[str]:
    found = []
    for imp in imports:
        source, target = package_of(imp.source), package_of(imp.target)
        if source not in rules.allowed:
            found.append(f"{imp.where}: package {source!r} is not in docs/architecture.md")
        elif source != target and target != TOP and not _covers(rules.allowed[source], imp.target):
            if not _covers(rules.exceptions.get(_relative(imp.source), set()), imp.target):
                allowed = ", ".join(sorted(rules.allowed[source])) or "nothing"
                found.append(f"{imp.where}: {_relative(imp.source)} imports {_relative(imp.target)} ({source} may import {allowed})")
    return sorted(set(found))


def unused_exceptions(imports: list[Import], rules: Rules) -> list[str]:
    used = {(_relative(imp.source), entry) for imp in imports for entry in rules.exceptions.get(_relative(imp.source), ())
            if _covers({entry}, imp.target)}
    return sorted(f"{module} -> {entry}" for module, entries in rules.exceptions.items() for entry in entries
                  if (module, entry) not in used)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in sorted(edges.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def package_edges(imports: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for imp in imports:
        source, target = package_of(imp.source), package_of(imp.target)
        if source != target:
            edges.setdefault(source, set()).add(target)
    return edges


def module_edges(imports: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for imp in imports:
        edges.setdefault(imp.source, set()).add(imp.target)
    return edges


@pytest.fixture(scope="module")
def rules() -> Rules:
    return parse_rules(DOC.read_text())


@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    return modules_under(SOURCE)


@pytest.fixture(scope="module")
def imports(modules) -> list[Import]:
    return imports_of(modules, SOURCE)


def test_every_import_is_one_the_doc_allows(imports, rules):
    assert violations(imports, rules) == []


def test_no_package_cycle_in_the_code_or_in_the_doc(imports, rules):
    assert cycles(package_edges(imports)) == []
    declared = {package: {entry.split(".")[0] for entry in entries} for package, entries in rules.allowed.items()}
    assert cycles(declared) == []


def test_no_module_cycle(imports):
    assert cycles(module_edges(imports)) == []


def test_the_doc_names_every_package_and_only_existing_ones(modules, rules):
    packages = {package_of(name) for name in modules}
    assert packages == set(rules.allowed)
    for entries in [*rules.allowed.values(), *rules.exceptions.values()]:
        assert all(f"{TOP}.{entry}" in modules for entry in entries), entries
    assert all(f"{TOP}.{module}" in modules for module in rules.exceptions)


def test_every_temporary_exception_is_still_needed(imports, rules):
    assert unused_exceptions(imports, rules) == []


def test_runtime_and_storage_contracts(imports):
    """The contracts this map was drawn for, on the code itself (not only through the doc)."""
    crossing = {(package_of(imp.source), imp.target) for imp in imports if package_of(imp.source) != package_of(imp.target)}
    assert {target for package, target in crossing if package == "quant"} == set()  # the runtime is a leaf
    # Storage access, URIs and the pods' variables: no resource's module.
    assert {target for package, target in crossing if package == "artifacts"} == {
        "slimserve.api.storage", "slimserve.api.uri", "slimserve.api.workload"}
    assert {target for package, target in crossing if package in ("models", "serving") and package_of(target) == "compression"} == set()


# The checker itself, on a synthetic tree: it must see what it is there to see.

SYNTHETIC_DOC = """
## Packages

| package | what it is for | may import |
| --- | --- | --- |
| `slimserve` | root | — |
| `low` | bottom | — |
| `high` | top | `low` |

## Temporary exceptions

| module | also imports | why |
| --- | --- | --- |
| `low.allowed` | `high.b` | a listed exception |
"""


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for relative, text in {"slimserve/__init__.py": "", "slimserve/low/__init__.py": "", "slimserve/high/__init__.py": "", **files}.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return modules_under(tmp_path)


def test_checker_reports_an_upward_import_and_the_cycle_it_makes(tmp_path):
    modules = _tree(tmp_path, {
        "slimserve/high/b.py": "from slimserve.low import a\n",
        # function-local and relative: still an import of slimserve.high.b by low
        "slimserve/low/a.py": "def late():\n    from ..high import b\n    return b\n",
        "slimserve/low/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import slimserve.high.b\n",
        "slimserve/low/allowed.py": "from slimserve.high.b import something\n",
    })
    rules = parse_rules(SYNTHETIC_DOC)
    imports = imports_of(modules, tmp_path)
    assert violations(imports, rules) == [
        "slimserve/low/a.py:2: low.a imports high.b (low may import nothing)",
        "slimserve/low/c.py:3: low.c imports high.b (low may import nothing)",
    ]
    assert cycles(package_edges(imports)) == [["high", "low"]]
    assert cycles(module_edges(imports)) == [["slimserve.high.b", "slimserve.low.a"]]


def test_checker_reports_undocumented_packages_and_stale_exceptions(tmp_path):
    modules = _tree(tmp_path, {"slimserve/extra/__init__.py": "from slimserve import low\n", "slimserve/low/allowed.py": ""})
    rules = parse_rules(SYNTHETIC_DOC)
    imports = imports_of(modules, tmp_path)
    assert violations(imports, rules) == ["slimserve/extra/__init__.py:1: package 'extra' is not in docs/architecture.md"]
    assert unused_exceptions(imports, rules) == ["low.allowed -> high.b"]
    assert cycles(package_edges(imports)) == []


def test_the_doc_parses_to_the_layers_it_draws(rules):
    assert rules.allowed["quant"] == set() and rules.allowed["api"] == set()
    assert rules.allowed["artifacts"] == {"api.storage", "api.uri", "api.workload"}
    assert "compression" not in rules.allowed["models"] and "compression" not in rules.allowed["serving"]
