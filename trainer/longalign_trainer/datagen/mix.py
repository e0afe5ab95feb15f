"""The finishing steps: the optional short-chat mix and the length histogram.

LongAlign trains on its long data together with short general chats (ShareGPT in the paper), from which
"empty assistant responses are filtered out". ``short_ratio`` is the number of short chats per generated
sample, drawn at random (seeded) without replacement.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from pathlib import Path

from longalign_trainer.datagen.documents import read_jsonl
from longalign_trainer.records import check_record


def sample_short(path: Path, n_long: int, ratio: float, seed: int) -> tuple[list[dict], Counter]:
    """Short chats to mix in: ``round(ratio * n_long)`` valid records of ``path`` (all of them if fewer)."""
    counts: Counter = Counter()
    records = []
    for i, record in read_jsonl(path, counts, "short_bad_json"):
        if not isinstance(record, dict) or check_record(record) is not None:  # the trainer's own definition
            counts["short_invalid_or_empty_turn"] += 1
            continue
        records.append({"messages": record["messages"], "meta": {"source": "short", "origin": f"{path.name}:{i}"}})
    want = round(ratio * n_long)
    if want > len(records):
        counts["short_shortfall"] += want - len(records)
    chosen = random.Random(seed).sample(records, min(want, len(records)))
    return chosen, counts


def histogram(lengths: list[int]) -> dict[str, int]:
    """Sample counts per power-of-two token-length bin (the paper plots 0–64k on a log scale).

    >>> histogram([100, 1000, 1024, 9000, 70000])
    {'0-1k': 2, '1k-2k': 1, '8k-16k': 1, '64k-128k': 1}
    """
    edges = [0] + [1024 * 2**k for k in range(12)]
    names = [
        f"{lo // 1024}k-{hi // 1024}k".replace("0k-", "0-", 1) if lo == 0 else f"{lo // 1024}k-{hi // 1024}k"
        for lo, hi in itertools.pairwise(edges)
    ] + [f">={edges[-1] // 1024}k"]
    out: Counter = Counter()
    for n in lengths:
        out[names[next((i for i, hi in enumerate(edges[1:]) if n < hi), len(names) - 1)]] += 1
    return {name: out[name] for name in names if out[name]}
