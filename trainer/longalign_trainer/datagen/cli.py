"""Generate LongAlign long-instruction data from long documents with a teacher model served by vLLM.

    longalign datagen --config datagen.yaml

Resumable: run the same command again after an interruption; finished documents are kept, the rest done.
Progress lines go to stdout; the summary to the termination-message path and OUTPUT_DIR/summary.json.
Exit codes: 0 complete, 1 incomplete (documents failed for lack of a server; rerun), 2 invalid config.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    """Arguments of ``longalign datagen``."""
    parser.add_argument("--config", required=True, help="the stage config (YAML or JSON)")
    parser.add_argument("--summary-path", default=None,
                        help="where to write the summary (default: the termination-message path)")


def run(args) -> int:
    """``longalign datagen --config FILE``."""
    import asyncio
    import sys
    from pathlib import Path

    from longalign_trainer.datagen.config import ConfigError, load_config
    from longalign_trainer.datagen.generate import run_async
    from longalign_trainer.datagen.store import ResumeMismatch

    try:
        cfg = load_config(args.config)
        summary = asyncio.run(run_async(cfg, summary_path=Path(args.summary_path) if args.summary_path else None))
    except (ConfigError, ResumeMismatch, FileNotFoundError) as e:
        print(f"datagen: {e}", file=sys.stderr)
        return 2
    if summary["status"] != "complete":
        print(f"datagen incomplete: {summary.get('error')}", file=sys.stderr)
        return 1
    return 0
