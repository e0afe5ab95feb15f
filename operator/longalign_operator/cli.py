"""The ``longalign`` command. Each subcommand imports its own stack only when run, so the operator
image never loads torch and the stage images never load kopf."""

from __future__ import annotations

import argparse
import sys

from longalign_operator import __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``longalign`` and its subcommands."""
    parser = argparse.ArgumentParser(prog="longalign", description=__doc__)
    parser.add_argument("--version", action="version", version=f"longalign {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``longalign`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
