"""Helpers of the evaluation tests: configs against the session's vLLM server, a benchmark with a long case."""

from __future__ import annotations

import json
from pathlib import Path

from longalign_trainer.evaluate.config import DATA_DIR
from longalign_trainer.tiny_model import local_corpus

SAMPLE = DATA_DIR / "longbench_chat_sample.jsonl"
SAMPLE_SHOTS = DATA_DIR / "longbench_chat_sample_few_shots.json"
STAND_IN_TEMPLATE = Path(__file__).parent / "stand_in_prompt_fs.txt"  # prompt_fs.txt's shape, our words
SECRET = "sk-test-8f3a1c0d-never-print-me"


def merge(cfg: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = merge(dict(cfg[key]), value)
        else:
            cfg[key] = value
    return cfg


def eval_config(tmp_path: Path, model_dir: Path, model_url: str | None, judge_url: str, **overrides) -> dict:
    """An eval config for the tiny model: short answers, few retries, so that tests stay fast on 2 cores.

    The judge prompt is ours unless a test asks for the published one (``published_judge``)."""
    cfg = {
        "model": {
            "path": str(model_dir),
            "served_name": "tiny",
            "max_tokens": 24,
            "extra_args": ["--enforce-eager"],  # a tiny model: no torch.compile (~30 s of each start here)
            **({"base_url": model_url} if model_url else {}),
        },
        "judge": {"base_url": judge_url, "model": "tiny", "constrain": "regex", "max_tokens": 8, "attempts": 3},
        "longbench_chat": {"path": str(SAMPLE), "few_shot_path": str(SAMPLE_SHOTS), "judge_prompt": "ours"},
        "engine": {
            "concurrency": 4,
            "request_timeout_s": 60,
            "max_retries": 2,
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.2,
        },
        "output_dir": str(tmp_path / "out"),
        "termination_message_path": str(tmp_path / "termination-log"),
    }
    return merge(cfg, overrides)


def published_judge() -> dict:
    """The ``longbench_chat`` settings of the published judge procedure, with the stand-in template."""
    return {"judge_prompt": "published", "judge_prompt_path": str(STAND_IN_TEMPLATE)}


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def benchmark_with_long_case(tmp_path: Path, words: int = 6000) -> tuple[Path, Path]:
    """The sample benchmark plus case 4: a document far longer than the 4096-token server context."""
    cases = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    shots = json.loads(SAMPLE_SHOTS.read_text())
    text = " ".join(" ".join(local_corpus()).split()[:words])
    question = "Which module is described last in this document?"
    cases.append(
        {
            "idx": 4,
            "prompt": "DOCUMENT START. " + text + "\n\nQUESTION END: " + question,
            "query": question,
            "answer": "The zipfile module.",
        }
    )
    shots.append(
        [{"answer": "zipfile", "score": 9}, {"answer": "json", "score": 1}, {"answer": "I don't know", "score": 2}]
    )
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(c) + "\n" for c in cases))
    return bench, write(tmp_path / "shots.json", shots)
