"""``longalign train --config FILE``: the training stage (run it under ``torchrun`` for several processes).

    torchrun --nproc_per_node 8 -m longalign_operator.cli train --config train.yaml
    longalign train --config train.yaml          # one local process (CPU or one GPU)

Progress lines go to stdout (rank 0); the summary to the termination-message path. On failure the summary
says ``"ok": false`` with the error, and the exit status is 1 (2 for a config that is invalid or cannot fit
in memory, refused before anything loads). On SIGTERM the run checkpoints after the
current step and exits with 143, its summary saying ``"preempted": true``; started again, it resumes.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    """Arguments of ``longalign train``."""
    parser.add_argument("--config", required=True, help="training config (YAML or JSON), see train/config.py")


def run(args) -> int:
    """Validate the config, run the recipe, write the summary."""
    import os
    import sys

    from longalign_trainer.contract import write_summary
    from longalign_trainer.train.config import load_config

    try:
        cfg = load_config(args.config)
    except (ValueError, OSError) as exc:
        print(exc, file=sys.stderr)
        write_summary({"stage": "train", "ok": False, "error": str(exc)[:2000]}, _summary_path(None))
        return 2
    from longalign_trainer.train.memory_estimate import DoesNotFit
    from longalign_trainer.train.recipe import Recipe

    try:
        summary = Recipe(cfg).run()
    except DoesNotFit as exc:  # refused before loading anything: a config error, like a bad field
        print(exc, file=sys.stderr)
        if os.environ.get("RANK", "0") == "0":
            write_summary({"stage": "train", "ok": False, "error": str(exc)[:2000]},
                          _summary_path(cfg.termination_message_path))
        return 2
    except Exception as exc:
        if os.environ.get("RANK", "0") == "0":
            write_summary({"stage": "train", "ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]},
                          _summary_path(cfg.termination_message_path))
        raise
    return 143 if summary.get("preempted") else 0  # 128 + SIGTERM: stopped on request, resumable


def _summary_path(path):
    from longalign_trainer.contract import termination_message_path

    return path or termination_message_path()
