"""Training: packed long-context SFT on DeepSpeed, one process or under torchrun.

  longalign train --config train.yaml                                            # one process
  torchrun --nproc-per-node 8 --no-python longalign train --config train.yaml    # several (standard env)

Example configs: trainer/longalign_trainer/train/examples/ (every field is documented in
trainer/longalign_trainer/train/config.py). Progress lines (JSON) go to stdout on rank 0, a progress bar to
stderr when it is a terminal; rejected data lines are printed as found and all listed in
OUTPUT_DIR/rejected-records.txt; the summary goes to the termination-message path. A killed run started
again resumes from its newest checkpoint.

Exit codes: 0 done; 1 failed (rerun: it resumes); 2 bad input (a missing or empty file, no usable
record, a missing model folder, an invalid config, a config that cannot fit in memory, refused with the
numbers before anything loads: fix it, a rerun cannot help); 4 a checkpoint or the export did not fit on its
volume (the partial one deleted, the last complete checkpoint intact: make room, a rerun resumes); 143 stopped
by SIGTERM after a checkpoint (resumable). (3 is evaluation's: a checkpoint that cannot be served.)
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``longalign train``."""
    parser.add_argument(
        "--config",
        required=True,
        help="training config (YAML or JSON, or the operator's stage config); "
        "example: trainer/longalign_trainer/train/examples/",
    )


def run(args: argparse.Namespace) -> int:
    """Validate the config and inputs, run the recipe, write the summary, print the closing line."""
    import os
    import sys
    import time

    from longalign_trainer.contract import (
        EXIT_BAD_INPUT,
        EXIT_OK,
        EXIT_VOLUME_FULL,
        report_bad_input,
        report_stop,
        write_summary,
    )
    from longalign_trainer.train.config import InputError, check_inputs, load_config

    started = time.time()
    lead = os.environ.get("RANK", "0") == "0"
    # Every pod states a bad input in its own summary: torchrun exits 1 whatever its workers returned, so the
    # summary is where the operator reads that no retry can help.
    pod_lead = os.environ.get("LOCAL_RANK", "0") == "0"
    try:
        cfg = load_config(args.config)
        check_inputs(cfg)
    except InputError as exc:
        return report_bad_input("train", str(exc)) if pod_lead else EXIT_BAD_INPUT
    from longalign_trainer.train.recipe import Recipe
    from longalign_trainer.train.volume_space import VolumeFull

    try:
        summary = Recipe(cfg).run()
    except InputError as exc:  # found while reading the data or refused by the memory estimate: every rank agrees
        return report_bad_input("train", str(exc), cfg.termination_message_path) if pod_lead else EXIT_BAD_INPUT
    except VolumeFull as exc:  # whichever ranks' writes failed say so (the others wait to be stopped)
        return report_stop("train", str(exc), "volume_full", EXIT_VOLUME_FULL, cfg.termination_message_path)
    except Exception as exc:
        if lead:  # a stop another rank of this pod stated since it started (a full volume) is the cause: kept
            write_summary(
                {"stage": "train", "ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]},
                cfg.termination_message_path,
                keep_stop_since=started,
            )
        raise
    if summary.get("preempted"):
        return 143  # 128 + SIGTERM: stopped on request, resumable
    if lead:
        print(closing_line(summary), file=sys.stderr, flush=True)
    return EXIT_OK


def closing_line(summary: dict) -> str:
    """The last line of a finished run, for people.

    >>> print(closing_line({"steps": 120, "final_loss": 1.234567, "tokens_per_s": 35123.4, "export": "/m",
    ...     "data": {"kept": 60, "rejected": 3}, "rejected_records": "/r"}))
    train: done, 120 steps, final loss 1.235, 35123 tokens/s; model in /m; records used 60, rejected 3 (listed in /r)
    """
    from longalign_trainer.contract import human

    data = summary.get("data", {})
    rejected = data.get("rejected", 0)
    where = f" (listed in {summary['rejected_records']})" if rejected and summary.get("rejected_records") else ""
    return (
        f"train: done, {summary['steps']} steps, final loss {human(summary.get('final_loss'))}, "
        f"{human(summary.get('tokens_per_s'))} tokens/s; model in {summary.get('export')}; "
        f"records used {data.get('kept', 0)}, rejected {rejected}{where}"
    )
