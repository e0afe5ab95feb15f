"""The ``longalign`` command.

Each subcommand lives in its own module, named in ``COMMANDS``, which provides ``add_arguments(parser)`` and
``run(args) -> int``. Such modules must stay cheap to import (heavy imports go inside ``run``), so that
``longalign --help`` is fast, the operator image never loads torch, and the stage images never load kopf.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from longalign_operator import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("longalign_operator.run_operator", "run the operator (watches LongAlignRuns)"),
    "uninstall": ("longalign_operator.uninstall", "stop the operator and remove its finalizer from every run"),
    "tiny-model": ("longalign_trainer.tiny_model", "build a tiny random Llama with a tokenizer and chat template"),
    "train": ("longalign_trainer.train.cli", "train the model: packed long-context SFT with loss weighting, on DeepSpeed"),
    "teacher-server": ("longalign_trainer.teacher_server", "lead or join a multi-node teacher replica (Ray + vLLM)"),
    "datagen": ("longalign_trainer.datagen.cli", "generate long-instruction data from long documents (Self-Instruct, vLLM)"),
    "eval": ("longalign_trainer.evaluate.cli", "evaluate a checkpoint: LongBench-Chat with an LLM judge, needle in a haystack"),
    "run": ("longalign_operator.local.command", "run a LongAlignRun's stages on this machine, without a cluster"),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``longalign`` and its subcommands."""
    parser = argparse.ArgumentParser(prog="longalign", description="Run the LongAlign recipe.")
    parser.add_argument("--version", action="version", version=f"longalign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
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
