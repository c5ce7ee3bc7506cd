"""Compression benchmarks, both models: runs the digits and the MiniLM benchmark (each in its own process,
so neither inherits the other's torch state) and prints their tables one after the other.

    .venv/bin/python benchmarks/compression.py [--threads 2] [--only digits|minilm]

Each script measures its variants side by side in one run; see benchmarks/compression_digits.py and
benchmarks/compression_minilm.py for what is compared and the targets.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {"digits": HERE / "compression_digits.py", "minilm": HERE / "compression_minilm.py"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=sorted(SCRIPTS))
    args = parser.parse_args()
    tables: list[tuple[str, str]] = []
    failed = False
    for name, script in SCRIPTS.items():
        if args.only and name != args.only:
            continue
        if not script.is_file():
            print(f"{name}: {script.name} is missing", file=sys.stderr)
            failed = True
            continue
        started = time.perf_counter()
        print(f"== {name}: {script.name} (this takes a few minutes)", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, str(script), "--threads", str(args.threads)], stdout=subprocess.PIPE, text=True)
        print(f"== {name}: exit {done.returncode} after {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
        failed |= done.returncode != 0
        tables.append((name, done.stdout.strip()))
    for name, table in tables:
        print(f"\n### {name}\n{table}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
