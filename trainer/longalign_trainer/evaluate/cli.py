"""Evaluate a checkpoint: LongBench-Chat graded by an LLM judge, and needle in a haystack.

    longalign eval --config eval.yaml

The checkpoint (a Hugging Face folder, e.g. training's OUTPUT_DIR/model) is served with vLLM; the judge is any
OpenAI-compatible endpoint, its API key read from the env var the config names (LONGALIGN_JUDGE_API_KEY).
Results go to OUTPUT_DIR (results.json, needle_heatmap.png, summary.json); progress lines to stdout; the summary
to the termination-message path.
Exit codes: 0 complete, 1 incomplete (judge or model server failed; rerun), 2 invalid config,
3 the checkpoint cannot be served.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    """Arguments of ``longalign eval``."""
    parser.add_argument("--config", required=True, help="the stage config (YAML or JSON, or the operator's envelope)")


def run(args) -> int:
    """``longalign eval --config FILE``."""
    import sys

    from longalign_trainer.evaluate.config import ConfigError, load_config
    from longalign_trainer.evaluate.run import CheckpointError
    from longalign_trainer.evaluate.run import run as run_eval

    try:
        cfg = load_config(args.config)
        summary = run_eval(cfg)
    except ConfigError as e:
        print(f"eval: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"eval: {e}", file=sys.stderr)
        return 3
    if summary["status"] != "complete":
        print(f"eval incomplete: {summary.get('error')}", file=sys.stderr)
        return 1
    print(f"eval: LongBench-Chat {summary['longbench_chat_score']}, needle accuracy {summary['needle_accuracy']}; "
          f"results in {summary['results']}", file=sys.stderr)
    return 0
