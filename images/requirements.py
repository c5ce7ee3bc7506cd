"""Print requirement lines from pyproject.toml, so that the images install the versions the project pins.

    python images/requirements.py                     every runtime dependency
    python images/requirements.py kopf kubernetes     only these (the operator image needs no torch)
    python images/requirements.py --except torch      all but these (torch comes from its own index)

Exits 2 naming any package that pyproject.toml does not list.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependencies(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """Canonical package name -> requirement line, in pyproject's order."""
    with pyproject.open("rb") as f:
        lines = tomllib.load(f)["project"]["dependencies"]
    return {canonical(_NAME.match(line).group(1)): line for line in lines}


def select(deps: dict[str, str], only: list[str], excluded: list[str]) -> list[str]:
    unknown = sorted({canonical(n) for n in only + excluded} - deps.keys())
    if unknown:
        raise KeyError(f"not a dependency in pyproject.toml: {', '.join(unknown)}")
    wanted = {canonical(n) for n in only} or set(deps)
    wanted -= {canonical(n) for n in excluded}
    return [line for name, line in deps.items() if name in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("packages", nargs="*", help="only these packages (default: all)")
    parser.add_argument("--except", dest="excluded", nargs="+", default=[], help="leave these out")
    args = parser.parse_args(argv)
    try:
        lines = select(dependencies(), args.packages, args.excluded)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
