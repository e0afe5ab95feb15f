"""The stage commands, from the trainer package alone: ``longalign train|datagen|eval|teacher-server|tiny-model``.

This is the ``longalign`` command of the trainer image, which installs the trainer package only
(``trainer/pyproject.toml``); the operator's ``longalign`` (``longalign_operator.cli``) adds its own commands
to these. Each command lives in its own module, named in ``STAGE_COMMANDS``, which provides
``add_arguments(parser)`` and ``run(args) -> int``. Such modules must stay cheap to import (heavy imports go
inside ``run``), so that ``--help`` is fast and the operator never loads torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one line of help)
Commands = dict[str, tuple[str, str]]

STAGE_COMMANDS: Commands = {
    "tiny-model": ("longalign_trainer.tiny_model", "build a tiny random Llama with a tokenizer and chat template"),
    "train": (
        "longalign_trainer.train.cli",
        "train the model: packed long-context SFT with loss weighting, on DeepSpeed",
    ),
    "teacher-server": ("longalign_trainer.teacher_server", "lead or join a multi-node teacher replica (Ray + vLLM)"),
    "datagen": (
        "longalign_trainer.datagen.cli",
        "generate long-instruction data from long documents (Self-Instruct, vLLM)",
    ),
    "eval": (
        "longalign_trainer.evaluate.cli",
        "evaluate a checkpoint: LongBench-Chat with an LLM judge, needle in a haystack",
    ),
}


def installed_version() -> str:
    """The version of the distribution that installed this package (``longalign-trainer`` in the trainer image)."""
    from importlib.metadata import packages_distributions, version

    dists = packages_distributions().get("longalign_trainer", [])
    return version(dists[0]) if dists else "(not installed)"


def build_parser(commands: Commands = STAGE_COMMANDS, version: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``longalign`` with ``commands``."""
    parser = argparse.ArgumentParser(prog="longalign", description="Run the LongAlign recipe.")
    parser.add_argument("--version", action="version", version=f"longalign {version or installed_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in commands.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(
            name, help=help_text, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command it names; without one, print the help (exit code 2)."""
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    status: int = args.run(args)
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point of the trainer image's ``longalign`` console script."""
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
