"""Small LongAlign-format datasets for the trainer tests (a long/short length mix, a learnable pattern)."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = [
    "the",
    "data",
    "model",
    "trains",
    "long",
    "context",
    "packing",
    "loss",
    "weight",
    "sequence",
    "token",
    "batch",
    "rank",
    "step",
    "epoch",
    "json",
    "parser",
    "returns",
    "string",
    "object",
    "list",
    "value",
    "key",
    "file",
    "line",
    "error",
    "test",
    "check",
    "run",
    "fast",
]


def write_jsonl(path: Path, records: list) -> Path:
    """Write records (dicts, or raw strings for broken lines) as JSONL."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def conversation(rng: random.Random, prompt_words: int, answer_words: int) -> dict:
    """A user/assistant exchange with a learnable pattern: the answer repeats the prompt's first words."""
    prompt = [rng.choice(WORDS) for _ in range(prompt_words)]
    answer = (prompt * (answer_words // max(len(prompt), 1) + 1))[:answer_words]
    return {
        "messages": [{"role": "user", "content": " ".join(prompt)}, {"role": "assistant", "content": " ".join(answer)}]
    }


def make_dataset(path: Path, n: int, seed: int, short=(3, 12), long=(60, 160), long_share=0.2) -> Path:
    """``n`` conversations with a long/short length mix, like LongAlign's data (scaled down)."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        lo, hi = long if rng.random() < long_share else short
        records.append(conversation(rng, rng.randint(lo, hi), rng.randint(2, 10)))
    return write_jsonl(path, records)
