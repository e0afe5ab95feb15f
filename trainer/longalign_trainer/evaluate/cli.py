"""Evaluation: LongBench-Chat graded by an LLM judge, and needle in a haystack.

  longalign eval --config FILE

Example config: trainer/longalign_trainer/evaluate/data/example.yaml (every field is documented in
trainer/longalign_trainer/evaluate/config.py). The checkpoint (a Hugging Face folder, e.g. training's
OUTPUT_DIR/model) is served with vLLM; the judge is any OpenAI-compatible endpoint, its API key read from
the env var the config names (LONGALIGN_JUDGE_API_KEY). For scores comparable with the paper's, bring
THUDM/LongAlign's LongBench_Chat files: prompt_fs.txt, few_shots.json and test_cases.json (see the README).
Results go to OUTPUT_DIR (results.json, needle_heatmap.png, summary.json); progress lines (JSON) to stdout,
a progress bar to stderr when it is a terminal; the summary to the termination-message path. Run the same
command again after an interruption: answers and scores already obtained are kept.

Exit codes: 0 complete; 1 incomplete (the judge or the model server failed: rerun); 2 bad input (a
missing benchmark file or model folder, malformed YAML, an invalid setting: fix it); 3 the checkpoint
cannot be served (vLLM's reason is in the summary).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``longalign eval``."""
    parser.add_argument(
        "--config",
        required=True,
        help="the stage config (YAML or JSON, or the operator's envelope); "
        "example: trainer/longalign_trainer/evaluate/data/example.yaml",
    )


def run(args: argparse.Namespace) -> int:
    """``longalign eval --config FILE``."""
    import sys

    from longalign_trainer.contract import EXIT_CANNOT_SERVE, human, report_bad_input
    from longalign_trainer.evaluate.config import ConfigError, load_config
    from longalign_trainer.evaluate.run import CheckpointError
    from longalign_trainer.evaluate.run import run as run_eval

    cfg = None
    try:
        cfg = load_config(args.config)
        summary = run_eval(cfg)
    except ConfigError as e:
        return report_bad_input("eval", str(e), cfg.termination_message_path if cfg else None)
    except CheckpointError as e:
        print(f"eval: {e}", file=sys.stderr)
        return EXIT_CANNOT_SERVE
    if summary["status"] != "complete":
        print(f"eval incomplete: {summary.get('error')}", file=sys.stderr)
        return 1
    print(
        f"eval: LongBench-Chat {human(summary['longbench_chat_score'])}, needle accuracy "
        f"{human(summary['needle_accuracy'])}; results in {summary['results']}",
        file=sys.stderr,
    )
    return 0
