"""Data generation: long-instruction data from long documents, with a teacher served by vLLM.

  longalign datagen --config FILE

Example config: trainer/longalign_trainer/datagen/example.yaml (every field is documented in
trainer/longalign_trainer/datagen/config.py). Resumable: run the same command again after an interruption;
finished documents are kept, the rest done. Progress lines (JSON) go to stdout, a progress bar to stderr
when it is a terminal; the summary to the termination-message path and OUTPUT_DIR/summary.json.

Exit codes: 0 complete; 1 incomplete (documents failed for lack of a server: rerun to resume); 2 bad input
(a missing or unusable documents folder or tokenizer, malformed YAML, an invalid setting: fix it, a rerun
cannot help). (3 is evaluation's: a checkpoint that cannot be served.)
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``longalign datagen``."""
    parser.add_argument(
        "--config",
        required=True,
        help="the stage config (YAML or JSON); example: trainer/longalign_trainer/datagen/example.yaml",
    )
    parser.add_argument(
        "--summary-path", default=None, help="where to write the summary (default: the termination-message path)"
    )


def run(args: argparse.Namespace) -> int:
    """``longalign datagen --config FILE``."""
    import asyncio
    import sys
    from pathlib import Path

    from longalign_trainer.contract import report_bad_input
    from longalign_trainer.datagen.config import ConfigError, load_config
    from longalign_trainer.datagen.generate import run_async
    from longalign_trainer.datagen.store import ResumeMismatch

    summary_path = Path(args.summary_path) if args.summary_path else None
    try:
        cfg = load_config(args.config)
        summary = asyncio.run(run_async(cfg, summary_path=summary_path))
    except (ConfigError, ResumeMismatch, FileNotFoundError) as e:
        return report_bad_input("datagen", str(e), summary_path)
    if summary["status"] != "complete":
        print(f"datagen incomplete: {summary.get('error')}", file=sys.stderr)
        return 1
    return 0
