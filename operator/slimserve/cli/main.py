"""Entry point of the `slimserve` command."""

from __future__ import annotations

import argparse
import sys

from slimserve import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimserve", description="Compress and serve PyTorch models.")
    parser.add_argument("--version", action="version", version=f"slimserve {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
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
