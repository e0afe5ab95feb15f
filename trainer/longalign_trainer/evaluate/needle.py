"""Needle in a haystack: can the model retrieve one sentence hidden at any depth of a long context?

For each (context length, depth) cell, filler text is cut to length with the model's tokenizer, the needle
sentence is inserted at the sentence boundary nearest to the requested depth, and the model is asked the
question about it. The answer is right when it contains the needle's key fact (case and punctuation ignored).

Sentence boundaries are found on the model's own tokens (its offset mapping): the needle goes between two
tokens where the text ends a sentence, so it never splits a token and its depth is measured in the model's
tokens. Where a sentence ends is ``sentence_gaps``' tested rule: after ``.``, ``!`` or ``?`` and any closing
quotes or brackets, before whitespace and a capital letter (or an opening quote), and never after an
initial ("John D.") or a common abbreviation ("p.", "Mr.", "e.g."). (A peer implementation searched for one
tokenizer's hard-coded "." token id; with any other tokenizer it found none and put every needle at the start
of the context.)

    depth 50%:   [filler ... end of a sentence.] [NEEDLE] [Next sentence ... filler]  + question
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longalign_trainer.chat_client import ContextOverflow, RequestFailed
from longalign_trainer.chat_tokens import prompt_tokens
from longalign_trainer.config_files import ConfigError

HAYSTACK = Path(__file__).parent / "data" / "haystack.txt"
SYSTEM = "You answer questions about the document the user gives you. Keep your answer short and direct."
# The end of a sentence: its last word, the stop, closing quotes/brackets; the gap; what starts the next one.
_SENTENCE_END = re.compile(r"(\S*?)([.!?]+)([\"'\u201d\u2019)\]]*)(\s+)(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "st",
        "sr",
        "jr",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "cf",
        "fig",
        "figs",
        "no",
        "nos",
        "vol",
        "vols",
        "pp",
        "p",
        "ch",
        "sec",
        "eq",
        "al",
        "inc",
        "ltd",
        "co",
        "corp",
        "mt",
        "ft",
        "gen",
        "col",
        "lt",
        "sgt",
        "capt",
        "rev",
        "hon",
        "gov",
        "sen",
        "rep",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "approx",
        "ca",
        "est",
        "dept",
        "univ",
        "ed",
        "eds",
        "op",
        "cit",
        "viz",
    ]
)


def user_turn(context: str, question: str) -> str:
    return f"{context}\n\nAnswer from the document above: {question}"


def normalize(text: str) -> str:
    """Lower case, punctuation as spaces, single spaces.

    >>> normalize("  Smoked-Rosemary, of course!")
    'smoked rosemary of course'
    """
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def is_correct(answer: str | None, key_fact: str) -> bool:
    """Exact match of the key fact, as whole words, in the answer.

    >>> is_correct("It is smoked Rosemary.", "smoked rosemary"), is_correct("rosemary", "smoked rosemary")
    (True, False)
    >>> is_correct("unsmoked rosemary", "smoked rosemary"), is_correct("", "x")
    (False, False)
    """
    fact = normalize(key_fact)
    return bool(fact) and f" {fact} " in f" {normalize(answer or '')} "


def sentence_gaps(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each gap between two sentences of ``text``: the whitespace after a sentence's stop
    and closing quotes, before the next sentence. A needle goes anywhere in a gap.

    >>> t = 'He said "Stop." Then John D. Rockefeller left (see p. 166). Mr. Smith stayed! "Why?" she asked.'
    >>> [t[:s] for s, _ in sentence_gaps(t)][:1], [t[e:e + 10] for _, e in sentence_gaps(t)]
    (['He said "Stop."'], ['Then John ', 'Mr. Smith ', '"Why?" she'])
    """
    gaps = []
    for m in _SENTENCE_END.finditer(text):
        word, stop = m.group(1).lower().lstrip("\"'(\u201c\u2018"), m.group(2)
        if stop == "." and (
            len(word) == 1 and word.isalpha() or word in ABBREVIATIONS or re.fullmatch(r"(?:[a-z]\.)+[a-z]", word)
        ):
            continue  # an initial, an abbreviation or an acronym like U.S.: the sentence goes on
        gaps.append((m.start(4), m.end(4)))
    return gaps


def load_haystack(path: Path | None) -> str:
    """The filler text: one UTF-8 file, or every ``.txt`` file of a folder (and its subfolders) in path order."""
    path = path or HAYSTACK
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ConfigError(
                f"needle.haystack_path: {path} holds no .txt files; give a text file or a folder of .txt files"
            )
    else:
        files = [path]
    try:
        texts = [f.read_text(encoding="utf-8") for f in files]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"needle.haystack_path: cannot read {path}: {e}") from None
    text = " ".join(p.strip() for t in texts for p in t.split("\n\n") if p.strip())
    if not sentence_gaps(text):
        raise ConfigError(f"needle.haystack_path: {path} has no sentence boundaries")
    return text


@dataclass
class Haystack:
    """Filler text of ``n_tokens`` model tokens, and the token positions where a sentence ends."""

    text: str
    offsets: list[tuple[int, int]]
    boundaries: list[int]  # token indices k: a sentence ends between token k-1 and token k

    @property
    def n_tokens(self) -> int:
        return len(self.offsets)


def make_haystack(tokenizer, filler: str, n_tokens: int) -> Haystack:
    """Filler repeated and cut to exactly ``n_tokens`` tokens of ``tokenizer``, with its sentence boundaries."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("model.path: the model's tokenizer has no fast version (needed for its offset mapping)")
    per_copy = max(len(tokenizer(filler, add_special_tokens=False)["input_ids"]), 1)
    copies = 1 + (n_tokens + 1) // per_copy
    while True:
        text = " ".join([filler] * copies)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) >= n_tokens + 1:
            break
        copies += 1
    offsets = [tuple(o) for o in enc["offset_mapping"][:n_tokens]]
    text = text[: offsets[-1][1]] if offsets else ""
    ends = sentence_gaps(text)
    boundaries, j = [], 0
    for k in range(1, len(offsets)):
        cut = offsets[k - 1][1]  # the character position between tokens k-1 and k
        while j < len(ends) and ends[j][1] < cut:
            j += 1
        if j < len(ends) and ends[j][0] <= cut <= ends[j][1]:
            boundaries.append(k)
    return Haystack(text, offsets, boundaries)


def insert_needle(hay: Haystack, needle: str, depth_percent: float) -> tuple[str, float]:
    """The haystack with ``needle`` at the sentence boundary nearest to ``depth_percent``; and the actual depth (%).

    The start of the text counts as a boundary; its end does not (the haystack is cut to length mid-sentence),
    so 100% means after the last whole sentence.
    """
    target = hay.n_tokens * depth_percent / 100
    k = min([0, *hay.boundaries], key=lambda b: abs(b - target))
    cut = hay.offsets[k - 1][1] if k > 0 else 0
    head, tail = hay.text[:cut].rstrip(), hay.text[cut:].lstrip()
    text = " ".join(p for p in (head, needle.strip(), tail) if p)
    return text, 100.0 * k / max(hay.n_tokens, 1)


def build_prompt(tokenizer, cfg, filler: str, context_len: int, depth: float) -> tuple[list[dict], dict]:
    """The chat messages for one cell (about ``context_len`` prompt tokens in all) and facts about them."""
    overhead = prompt_tokens(tokenizer, user_turn(cfg.needle, cfg.question), system=SYSTEM)
    hay = make_haystack(tokenizer, filler, max(context_len - overhead, 0))
    context, actual = insert_needle(hay, cfg.needle, depth)
    content = user_turn(context, cfg.question)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]
    return messages, {
        "actual_depth_percent": round(actual, 2),
        "prompt_tokens": prompt_tokens(tokenizer, content, system=SYSTEM),
    }


async def evaluate(
    cfg,
    model,
    tokenizer,
    server_context: int,
    on_done=lambda: None,
    judge=None,
    filler: str | None = None,
    obtained=None,
    key: str = "",
) -> dict:
    """Every cell of the grid: prompt, answer, exact-match grade (and the judge's 1-10 rating when ``judge``
    is given: it sees the question, the needle as the reference answer and the answer, never the haystack).

    With ``obtained`` (a ``longbench.Obtained``), cells answered before under ``key`` are not asked again."""
    filler = filler if filler is not None else load_haystack(cfg.haystack_path)
    tokenizing = asyncio.Lock()  # one tokenizer, one thread at a time (fast tokenizers are not re-entrant)

    async def one(length: int, depth: float) -> dict:
        cell: dict[str, Any] = {"context_length": length, "depth_percent": depth, "correct": None, "answer": None}
        if obtained is not None and (known := obtained.get(key, "needle", f"{length}:{depth}")) is not None:
            on_done()
            return known
        if length + cfg.max_tokens > server_context:
            cell["skipped"] = f"exceeds the server's context ({server_context} tokens)"
            on_done()
            return cell
        async with tokenizing:
            messages, facts = await asyncio.to_thread(build_prompt, tokenizer, cfg, filler, length, depth)
        cell.update(facts)
        try:
            c = await model.complete(messages, max_tokens=cfg.max_tokens, endpoint=0)
        except (RequestFailed, ContextOverflow) as e:
            cell["error"] = str(e)[:300]
        else:
            cell.update(answer=c.text[:500], correct=is_correct(c.text, cfg.key_fact))
            if judge is not None:
                grade = await judge.grade(f"needle:{length}:{depth}", cfg.question, cfg.needle, [], c.text)
                cell.update(judge_score=grade.score, judge_unscored_reason=grade.reason)
            if obtained is not None and not (cell.get("judge_unscored_reason") or "").startswith("judge_unavailable"):
                obtained.put(key, "needle", f"{length}:{depth}", cell)
        on_done()
        return cell

    cells = await asyncio.gather(*(one(n, d) for n in cfg.context_lengths for d in cfg.depths_percent))
    graded = [c for c in cells if c["correct"] is not None]
    judged = [c["judge_score"] for c in cells if c.get("judge_score") is not None]
    return {
        "accuracy": round(sum(c["correct"] for c in graded) / len(graded), 4) if graded else None,
        **(
            {
                "judge_mean_score": round(sum(judged) / len(judged), 3) if judged else None,
                "judge_unscored": sum(1 for c in graded if c.get("judge_score") is None),
            }
            if judge is not None
            else {}
        ),
        "cells": len(cells),
        "graded": len(graded),
        "skipped": sum(1 for c in cells if "skipped" in c),
        "errors": sum(1 for c in cells if "error" in c),
        "context_lengths": list(cfg.context_lengths),
        "depths_percent": list(cfg.depths_percent),
        "grid": cells,
    }


def plot_heatmap(result: dict, path: Path, title: str) -> Path:
    """A depth x context-length heatmap of accuracy (grey: not graded), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lengths, depths = result["context_lengths"], result["depths_percent"]
    acc = np.full((len(depths), len(lengths)), np.nan)
    for c in result["grid"]:
        if c["correct"] is not None:
            acc[depths.index(c["depth_percent"]), lengths.index(c["context_length"])] = float(c["correct"])
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.2 + 0.5 * len(depths)), dpi=100)
    cmap = matplotlib.colormaps["RdYlGn"].copy()
    cmap.set_bad("#cccccc")
    im = ax.imshow(np.ma.masked_invalid(acc), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(lengths)), [f"{n / 1000:g}k" if n >= 1000 else str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="accuracy")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
