"""Print requirement lines from pyproject.toml, so that the images install the versions the project pins.

    python images/requirements.py                            every runtime dependency
    python images/requirements.py --extra operator           what one part runs (an extra of pyproject.toml)
    python images/requirements.py --extra models torch       only these, of the extra
    python images/requirements.py --extra models --except torch         all but these
    python images/requirements.py --extra serve --without-extra models  all but another extra's
    python images/requirements.py --lock images/requirements.lock --extra serve    ... locked, with hashes

An extra names its packages (and `slimserve[OTHER]` for another extra's); their versions are those of
`project.dependencies`, which a plain install keeps all of. With --lock, the same selection comes from the lock
file (`make lock`) instead: each package at its locked version with its hashes, together with everything it
depends on (the lock's `# via` annotations), for `pip install --require-hashes`; a left-out package leaves out
what only it needs. Exits 2 naming any package or extra that pyproject.toml (or the lock) does not list.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path
from typing import NamedTuple

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_OWN_EXTRA = re.compile(r"^\s*slimserve\[([^\]]+)\]\s*$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project(pyproject: Path) -> dict:
    with pyproject.open("rb") as f:
        return tomllib.load(f)["project"]


def dependencies(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """Canonical package name -> requirement line, in pyproject's order."""
    return {canonical(_NAME.match(line).group(1)): line for line in _project(pyproject)["dependencies"]}


def extra_packages(extra: str, pyproject: Path = PYPROJECT) -> list[str]:
    """The canonical names an extra lists, with those of the extras it includes (`slimserve[OTHER]`)."""
    extras = _project(pyproject).get("optional-dependencies", {})
    names: list[str] = []

    def add(name: str, seen: tuple[str, ...]) -> None:
        if name not in extras:
            raise KeyError(f"not an extra in pyproject.toml: {name}")
        if name in seen:
            raise KeyError(f"extras include each other: {' -> '.join((*seen, name))}")
        for entry in extras[name]:
            if included := _OWN_EXTRA.match(entry):
                for other in included.group(1).split(","):
                    add(other.strip(), (*seen, name))
            elif (package := canonical(_NAME.match(entry).group(1))) not in names:
                names.append(package)

    add(extra, ())
    return names


def select(deps: dict[str, str], only: list[str], excluded: list[str], within: list[str] | None = None) -> list[str]:
    """The requirement lines of `only` (default: all of `within`, else every dependency) less `excluded`."""
    unknown = sorted({canonical(n) for n in only + excluded + (within or [])} - deps.keys())
    if unknown:
        raise KeyError(f"not a dependency in pyproject.toml: {', '.join(unknown)}")
    scope = set(deps) if within is None else set(within)
    outside = sorted({canonical(n) for n in only} - scope)
    if outside:
        raise KeyError(f"not in the extra: {', '.join(outside)}")
    wanted = {canonical(n) for n in only} or scope
    wanted -= {canonical(n) for n in excluded}
    return [line for name, line in deps.items() if name in wanted]


class Locked(NamedTuple):
    lines: list[str]  # the lock's lines for the package: `name==version \\` and its hashes
    parents: set[str]  # the packages that need it (canonical names); none for a top-level requirement

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


_VIA = re.compile(r"^\s*#\s+(?:via\s+)?([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*$")


def read_lock(lock: Path) -> dict[str, Locked]:
    """Canonical name -> its entry, from a `uv pip compile --generate-hashes` (or pip-compile) output."""
    entries: dict[str, Locked] = {}
    current: Locked | None = None
    for line in lock.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            current = entries.setdefault(canonical(_NAME.match(line).group(1)), Locked([line], set()))
        elif current is not None and line.lstrip().startswith("--hash="):
            current.lines.append(line)
        elif current is not None and (via := _VIA.match(line)) and via.group(1) != "via":
            # `# via slimserve (pyproject.toml)` and `# via -r FILE` name no package: a top-level requirement
            if not line.rstrip().endswith(")"):
                current.parents.add(canonical(via.group(1)))
    return entries


def closure(lock: dict[str, Locked], roots: list[str], excluded: set[str], leaves: set[str] = frozenset()) -> list[str]:
    """The roots and what they need, transitively, in the lock's order; nothing is reached through an
    excluded package, nor through a leaf (one installed without its dependencies)."""
    children: dict[str, set[str]] = {}
    for name, entry in lock.items():
        for parent in entry.parents:
            children.setdefault(parent, set()).add(name)
    unknown = sorted(set(roots) - lock.keys())
    if unknown:
        raise KeyError(f"not in the lock file: {', '.join(unknown)}")
    wanted: set[str] = set()
    todo = [name for name in roots if name not in excluded]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            if name not in leaves:
                todo.extend(child for child in children.get(name, ()) if child not in excluded)
    return [lock[name].text for name in lock if name in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("packages", nargs="*", help="only these packages (default: all)")
    parser.add_argument("--extra", help="only the packages of this extra (default: every dependency)")
    parser.add_argument("--except", dest="excluded", nargs="+", default=[], help="leave these out")
    parser.add_argument("--without-extra", dest="without", action="append", default=[],
                        help="leave out the packages of this extra (one already installed)")
    parser.add_argument("--lock", type=Path, help="print the locked requirements, with hashes and dependencies; "
                        "without --extra, PACKAGES may be any the lock holds (pip itself)")
    parser.add_argument("--no-deps-of", dest="leaves", nargs="+", default=[],
                        help="with --lock: these go in without what they depend on")
    args = parser.parse_args(argv)
    try:
        within = extra_packages(args.extra) if args.extra else None
        excluded = args.excluded + [name for other in args.without for name in extra_packages(other)]
        if args.lock and not args.extra:
            lines = [text for text in closure(read_lock(args.lock), [canonical(n) for n in args.packages], set())]
        else:
            lines = select(dependencies(), args.packages, excluded, within)
        if args.lock and args.extra:
            lock = read_lock(args.lock)
            leaves = {canonical(n) for n in args.leaves}
            # What an excluded extra needs is installed already; what only an excluded package needs is not wanted.
            installed = set(closure(lock, [canonical(n) for o in args.without for n in extra_packages(o)], set(), leaves))
            roots = [canonical(_NAME.match(line).group(1)) for line in lines]
            wanted = closure(lock, roots, {canonical(n) for n in excluded}, leaves)
            lines = [text for text in wanted if text not in installed]
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
