"""Entry point of the `slimserve` command.

Each subcommand lives in its own module of this package, exposing `register(subparsers)`, which adds
its parser and sets `handler` (a function taking the parsed args and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from slimserve import __version__

# Subcommand modules, in the order `slimserve --help` lists them.
SUBCOMMANDS: tuple[str, ...] = ("run", "compress", "serve", "batch", "operator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimserve", description="Compress PyTorch models and serve them.")
    parser.add_argument("--version", action="version", version=f"slimserve {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"slimserve.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
