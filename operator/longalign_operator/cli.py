"""The ``longalign`` command: the operator's commands and the stage commands of the trainer package.

The stage commands (``train``, ``datagen``, ``eval``, ``teacher-server``, ``tiny-model``) come from
``longalign_trainer.cli``, which the trainer image runs alone; each command's module provides
``add_arguments(parser)`` and ``run(args) -> int`` and stays cheap to import (heavy imports go inside ``run``),
so that ``longalign --help`` is fast, the operator image never loads torch, and the stage images never load kopf.
"""

from __future__ import annotations

import argparse
import sys

from longalign_operator import __version__
from longalign_trainer import cli as stage_cli

COMMANDS: stage_cli.Commands = {
    "operator": ("longalign_operator.run_operator", "run the operator (watches LongAlignRuns)"),
    "uninstall": ("longalign_operator.uninstall", "stop the operator and remove its finalizer from every run"),
    "run": ("longalign_operator.local.command", "run a LongAlignRun's stages on this machine, without a cluster"),
    **stage_cli.STAGE_COMMANDS,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``longalign`` and its subcommands."""
    return stage_cli.build_parser(COMMANDS, version=__version__)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``longalign`` console script."""
    return stage_cli.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
