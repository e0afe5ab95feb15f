"""Training data: LongAlign JSONL files → tokenized examples with loss only on the assistant's tokens.

A multi-hour job must neither crash on one bad line nor hide it: every line that cannot be used (blank,
not JSON, not a valid record as ``longalign_trainer.records`` defines it, too long, nothing to learn) is
counted by reason and named ``file:line: reason``: printed as found (the first ``MAX_PRINTED``) and listed in
full in ``OUTPUT_DIR/rejected-records.txt``. A file with no usable line at all is bad input (exit 2). Records are
tokenized with the model's own chat template; its ``{% generation %}`` blocks mark the assistant's tokens, the
only ones with labels.
Several files are used whole, or mixed by ratio when ratios are given (long documents + short general chat),
deterministically from the seed.
Ranks share the tokenizing (each takes every W-th line) and gather the results, so W ranks start W× sooner.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from longalign_trainer.config_files import InputError
from longalign_trainer.records import check_record
from longalign_trainer.train.packing import IGNORE_INDEX

if TYPE_CHECKING:  # numpy is imported where arrays are made
    import numpy as np

MAX_PRINTED = 20  # rejected lines printed to the log as they are found; the rest are counted (all are listed
#                   in the rejected-records file beside the output)
REJECTED_FILE = "rejected-records.txt"
Log = Callable[[str], None]


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
class FileUse:
    """What the mixture took of one file: its valid records, those used, and why the rest were left out."""

    valid: int
    used: int
    left_out_reason: str | None = None

    def summary(self) -> dict:
        """A JSON-able digest."""
        out: dict = {"valid": self.valid, "used": self.used}
        if self.left_out_reason:
            out.update(left_out=self.valid - self.used, why=self.left_out_reason)
        return out


@dataclass
class DataReport:
    """What happened to every line: kept, rejected (by reason, each named ``file:line: reason``), truncated.

    ``log`` (when given) receives each rejected line as it is found, up to ``MAX_PRINTED``, then one line saying
    the rest are only counted.
    """

    records: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    named: list[str] = field(default_factory=list)  # "file:line: reason" for every rejected line
    per_file: dict[str, FileUse] = field(default_factory=dict)  # file -> what the mixture took of it
    log: Log | None = field(default=None, repr=False, compare=False)

    def drop(self, source: str, reason: str) -> None:
        """Count and name a line that cannot be used; print it while fewer than ``MAX_PRINTED`` were."""
        self.dropped[reason] += 1
        self.named.append(f"{source}: {reason}")
        if self.log is not None and len(self.named) <= MAX_PRINTED:
            self.log(f"rejected {source}: {reason}")
            if len(self.named) == MAX_PRINTED:
                self.log(
                    f"more rejected lines are counted, not printed; all are listed in {REJECTED_FILE} beside the output"
                )

    @property
    def rejected(self) -> int:
        """Lines that cannot be trained on (invalid or unusable); records the mixture left out are not counted."""
        return sum(self.dropped.values())

    def merge(self, others: Sequence[DataReport]) -> None:
        """Add the counts of other ranks' reports; every named line, in file and line order."""
        named = list(self.named)
        for other in others:
            self.records += other.records
            self.truncated += other.truncated
            self.dropped.update(other.dropped)
            named.extend(other.named)
        self.named = sorted(named, key=_file_and_line)

    def write_rejected(self, path: Path) -> Path:
        """The full list of rejected lines, one ``file:line: reason`` a line (an empty file when there are none)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(n + "\n" for n in self.named), encoding="utf-8")
        return path

    def summary(self) -> dict:
        """A JSON-able digest for progress lines and the stage summary."""
        return {
            "records": self.records,
            "kept": self.kept,
            "rejected": self.rejected,
            "truncated": self.truncated,
            "dropped": dict(self.dropped),
            "first_rejected": self.named[:5],
            "per_file": {f: use.summary() for f, use in self.per_file.items()},
        }


def _file_and_line(named: str) -> tuple[str, int]:
    """``(path, line)`` of ``"path:line: reason"``."""
    where = named.split(": ", 1)[0]
    path, line = where.rsplit(":", 1)
    return path, int(line)


def read_conversations(
    path: Path, report: DataReport, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[str, list[dict]]]:
    """Yield ``(file:line, messages)`` for every valid line of a JSONL file; count and name the others in ``report``.

    Blank lines are rejected lines too (counted and named): a file is one record per line. With ``world_size``
    > 1, only this rank's lines (every W-th, from line ``rank + 1``) are read.
    """
    with open(path, encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, start=1):
            if (lineno - 1) % world_size != rank:
                continue
            report.records += 1
            source = f"{path}:{lineno}"
            if not line.strip():
                report.drop(source, "blank line")
                continue
            try:
                record = json.loads(line)
            except ValueError:
                report.drop(source, "invalid JSON")
                continue
            if (reason := check_record(record)) is not None:
                report.drop(source, reason)
                continue
            yield source, record["messages"]


def tokenize(
    tokenizer, messages: list[dict], source: str, max_tokens: int, overlong: str, report: DataReport, line: int = 0
) -> Example | None:
    """Tokenize one conversation with the chat template; None (and counted) when it cannot be trained on."""
    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
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


def load_examples(
    files: Sequence[tuple[Path, float | None]],
    tokenizer,
    max_tokens: int,
    overlong: str,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    all_gather: Callable[[object], list] | None = None,
    log: Log | None = None,
    rejected_path: Path | None = None,
) -> tuple[list[Example], DataReport]:
    """Read, validate, tokenize and mix the training files; every line is accounted for in the report.

    With no ratios (all None) every valid record of every file is used; with ratios, the largest mixture with
    those proportions (``mixture_counts``), and the report says per file how many were used and why not the rest.
    Raises ``InputError`` when a file has no usable record. With several ranks, each tokenizes its share and
    ``all_gather`` (an object all-gather over the ranks) brings every rank the same examples, in file and line
    order, so the mixture is the same everywhere. ``log`` receives rejected lines as they are found; rank 0
    writes the full list to ``rejected_path``.
    """
    report = DataReport(log=log)
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
        gathered = all_gather((per_file, replace(report, log=None)))
        per_file = [
            sorted((ex for shard, _ in gathered for ex in shard[f]), key=lambda ex: ex.line) for f in range(len(files))
        ]
        report = DataReport()
        report.merge([r for _, r in gathered])
    if rejected_path is not None and rank == 0:
        report.write_rejected(rejected_path)
    for (path, _), examples in zip(files, per_file, strict=True):
        if not examples:
            raise InputError(
                f"{path}: no usable record among its {_lines_in(report, path)} lines (each line must "
                f"be a LongAlign record: see {REJECTED_FILE} beside the output for why each was "
                "rejected, and fix or remove the file)"
            )
    ratios = [r for _, r in files]
    if all(r is None for r in ratios):
        counts = [len(e) for e in per_file]
    else:
        counts = mixture_counts([len(e) for e in per_file], [1.0 if r is None else r for r in ratios])
    limiting = min(range(len(files)), key=lambda f: len(per_file[f]) / (ratios[f] or 1.0))
    rng = random.Random(seed)
    mixed: list[Example] = []
    for (path, ratio), examples, count in zip(files, per_file, counts, strict=True):
        chosen = examples if count == len(examples) else rng.sample(examples, count)
        why = None
        if count < len(examples):
            why = (
                f"ratio {ratio:g}: the largest mixture with the ratios given takes {count}, limited by "
                f"{files[limiting][0]} ({len(per_file[limiting])} valid records at ratio "
                f"{files[limiting][1]:g}); leave out the ratios to use every record"
            )
        report.per_file[str(path)] = FileUse(len(examples), count, why)
        mixed.extend(chosen)
    report.kept = len(mixed)
    return mixed, report


def _lines_in(report: DataReport, path: Path) -> int:
    """The lines of ``path`` that were rejected (all of them, when a file has no usable record)."""
    prefix = f"{path}:"
    return sum(1 for n in report.named if n.startswith(prefix))
