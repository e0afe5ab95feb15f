"""Training data: LongAlign JSONL files → tokenized examples with loss only on the assistant's tokens.

A multi-hour job must neither crash on one bad line nor hide it: every record that cannot be used is
counted by reason and the first ones are named by ``file:line``. Records are tokenized with the model's own
chat template; its ``{% generation %}`` blocks mark the assistant's tokens, the only ones with labels.
Several files are mixed by ratio (long documents + short general chat), deterministically from the seed.
Ranks share the tokenizing (each takes every W-th line) and gather the results, so W ranks start W× sooner.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from longalign_trainer.train.packing import IGNORE_INDEX

if TYPE_CHECKING:  # numpy is imported where arrays are made
    import numpy as np

ROLES = ("system", "user", "assistant")
MAX_NAMED = 20  # bad records named individually in the report; the rest are only counted


@dataclass(frozen=True)
class Example:
    """One tokenized conversation: ``labels`` equal ``input_ids`` on assistant tokens, -100 elsewhere.

    int32 arrays, not lists: 10k conversations of 20k tokens are 1.6 GB per rank this way, ~15 GB as lists.
    """

    input_ids: np.ndarray
    labels: np.ndarray
    source: str  # file:line
    line: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class DataReport:
    """What happened to every record: kept, dropped (by reason), truncated."""

    records: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    named: list[str] = field(default_factory=list)  # "file:line: reason" for the first MAX_NAMED
    per_file: dict[str, int] = field(default_factory=dict)  # file -> examples in the mixture

    def drop(self, source: str, reason: str) -> None:
        """Count a record that cannot be used, naming it while the list is short."""
        self.dropped[reason] += 1
        if len(self.named) < MAX_NAMED:
            self.named.append(f"{source}: {reason}")

    def merge(self, others: Sequence[DataReport]) -> None:
        """Add the counts of other ranks' reports; keep the first named records in file and line order."""
        named = list(self.named)
        for other in others:
            self.records += other.records
            self.truncated += other.truncated
            self.dropped.update(other.dropped)
            named.extend(other.named)
        self.named = sorted(named, key=_line_of)[:MAX_NAMED]

    def summary(self) -> dict:
        """A JSON-able digest for progress lines and the stage summary."""
        return {"records": self.records, "kept": self.kept, "truncated": self.truncated,
                "dropped": dict(self.dropped), "first_dropped": self.named[:5], "per_file": self.per_file}


def check_messages(record: object) -> str | None:
    """Why a parsed record is not a usable conversation, or None when it is.

    >>> check_messages({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    >>> check_messages({"messages": [{"role": "user", "content": "hi"}]})
    'no assistant turn'
    >>> check_messages({"messages": [{"content": "hi"}]})
    'message 0: missing role'
    >>> check_messages({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "a"}]})
    'message 0: empty content'
    """
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        return 'not an object with a "messages" list'
    messages = record["messages"]
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            return f"message {n}: missing role"
        if message["role"] not in ROLES:
            return f"message {n}: unknown role {str(message['role'])[:20]!r}"
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            return f"message {n}: empty content"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn"
    return None


def _line_of(named: str) -> int:
    """The line number in ``"path:line: reason"``."""
    return int(named.split(": ", 1)[0].rsplit(":", 1)[1])


def read_conversations(path: Path, report: DataReport, rank: int = 0,
                       world_size: int = 1) -> Iterator[tuple[str, list[dict]]]:
    """Yield ``(file:line, messages)`` for every usable line of a JSONL file; count the others in ``report``.

    With ``world_size`` > 1, only this rank's lines (every W-th, from line ``rank + 1``) are read.
    """
    with open(path, encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, start=1):
            if (lineno - 1) % world_size != rank or not line.strip():
                continue
            report.records += 1
            source = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except ValueError:
                report.drop(source, "invalid JSON")
                continue
            if (reason := check_messages(record)) is not None:
                report.drop(source, reason)
                continue
            yield source, record["messages"]


def tokenize(tokenizer, messages: list[dict], source: str, max_tokens: int, overlong: str,
             report: DataReport, line: int = 0) -> Example | None:
    """Tokenize one conversation with the chat template; None (and counted) when it cannot be trained on."""
    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
    if len(ids) > max_tokens:
        if overlong == "drop":
            report.drop(source, f"longer than {max_tokens} tokens")
            return None
        ids, mask = ids[:max_tokens], mask[:max_tokens]
        report.truncated += 1
    # A label on position 0 is never a target (nothing precedes it), so it does not count.
    if not any(mask[1:]):
        report.drop(source, "no assistant tokens" + (" after truncation" if len(mask) == max_tokens else ""))
        return None
    import numpy as np

    input_ids = np.asarray(ids, dtype=np.int32)
    labels = np.where(np.asarray(mask, dtype=bool), input_ids, IGNORE_INDEX).astype(np.int32)
    return Example(input_ids, labels, source, line)


def mixture_counts(available: Sequence[int], ratios: Sequence[float]) -> list[int]:
    """How many examples to take from each file: proportions ``ratios``, as many as possible, none repeated.

    >>> mixture_counts([100, 1000], [1, 1])
    [100, 100]
    >>> mixture_counts([100, 1000], [1, 3])
    [100, 300]
    >>> mixture_counts([100, 50], [1, 1])
    [50, 50]
    """
    if not any(available):
        return [0] * len(available)
    scale = min(n / r for n, r in zip(available, ratios, strict=True))
    return [min(n, int(scale * r + 1e-9)) for n, r in zip(available, ratios, strict=True)]


def load_examples(files: Sequence[tuple[Path, float]], tokenizer, max_tokens: int, overlong: str,
                  seed: int, rank: int = 0, world_size: int = 1,
                  all_gather: Callable[[object], list] | None = None) -> tuple[list[Example], DataReport]:
    """Read, validate, tokenize and mix the training files; every record is accounted for in the report.

    With several ranks, each tokenizes its share and ``all_gather`` (an object all-gather over the ranks)
    brings every rank the same examples, in file and line order, so the mixture is the same everywhere.
    """
    report = DataReport()
    per_file: list[list[Example]] = []
    for path, _ in files:
        examples = []
        for source, messages in read_conversations(Path(path), report, rank, world_size):
            line = int(source.rsplit(":", 1)[1])
            if (ex := tokenize(tokenizer, messages, source, max_tokens, overlong, report, line)) is not None:
                examples.append(ex)
        per_file.append(examples)
    if world_size > 1:
        if all_gather is None:
            raise ValueError("load_examples: several ranks need all_gather")
        gathered = all_gather((per_file, report))
        per_file = [sorted((ex for shard, _ in gathered for ex in shard[f]), key=lambda ex: ex.line)
                    for f in range(len(files))]
        report = DataReport()
        report.merge([r for _, r in gathered])
    counts = mixture_counts([len(e) for e in per_file], [r for _, r in files])
    rng = random.Random(seed)
    mixed: list[Example] = []
    for (path, _), examples, count in zip(files, per_file, counts, strict=True):
        chosen = examples if count == len(examples) else rng.sample(examples, count)
        report.per_file[str(path)] = count
        if count < len(examples):
            report.dropped["left out by the mixture ratio"] += len(examples) - count
        mixed.extend(chosen)
    report.kept = len(mixed)
    return mixed, report
