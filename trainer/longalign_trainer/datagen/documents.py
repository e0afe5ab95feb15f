"""Long documents: read from a folder, tagged with a source, measured with the teacher's tokenizer, filtered.

Every file under ``documents_dir`` is read: ``.txt``/``.md`` as one document each, ``.jsonl`` and ``.parquet``
as one document per record (its ``text_field``). A document's id is stable across runs (the relative path,
plus ``:N`` for the N-th record, plus ``#pK`` for the K-th part of a split), because resuming depends on it.

Documents shorter than ``min_tokens`` are skipped; longer than ``max_tokens`` are split into parts at
paragraph (else sentence, else token) boundaries, or skipped, by setting. Every skip is counted with its reason.
"""

from __future__ import annotations

import fnmatch
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Document:
    id: str
    source: str
    text: str
    n_tokens: int
    task_types: tuple[str, ...] = ()  # when set, only these (a pair of documents gets "comparison")


@dataclass
class Corpus:
    documents: list[Document] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason → count
    files: int = 0


def source_of(rel_path: str, sources: dict[str, str], record_source: str | None = None) -> str:
    """The source tag of a document: a matching glob from the config, else the record's own, else the top folder.

    >>> source_of("books/moby.txt", {})
    'books'
    >>> source_of("moby.txt", {})
    'default'
    >>> source_of("dump/a.jsonl", {"dump/*.jsonl": "web"}, record_source="arxiv")
    'web'
    >>> source_of("dump/a.jsonl", {}, record_source="arxiv")
    'arxiv'
    """
    for pattern, name in sources.items():
        if fnmatch.fnmatch(rel_path, pattern):
            return name
    if record_source:
        return str(record_source)
    parts = Path(rel_path).parts
    return parts[0] if len(parts) > 1 else "default"


def iter_raw(documents_dir: Path, text_field: str, counts: Counter) -> Iterator[tuple[str, str, str, str | None]]:
    """(file's relative path, document id, text, record's source) of every document in the folder, in order."""
    for path in sorted(p for p in documents_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(documents_dir).as_posix()
        suffix = path.suffix.lower()
        if suffix not in SUFFIXES:
            counts["unsupported_file"] += 1
            continue
        if suffix in (".txt", ".md"):
            yield rel, rel, path.read_text(errors="replace"), None
        elif suffix == ".jsonl":
            for i, record in read_jsonl(path, counts, "bad_record"):
                yield from _record(rel, i, record, text_field, counts)
        else:
            import pyarrow.parquet as pq

            for i, record in enumerate(pq.read_table(path).to_pylist()):
                yield from _record(rel, i, record, text_field, counts)


def read_jsonl(path: Path, counts: Counter, bad_key: str) -> Iterator[tuple[int, object]]:
    """(line index, parsed value) of each non-blank line of a JSONL file; a line that is not JSON is counted
    under ``bad_key`` and skipped."""
    with open(path, errors="replace") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except ValueError:
                counts[bad_key] += 1


def _record(rel: str, i: int, record, text_field: str, counts: Counter):
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        counts["bad_record"] += 1
        return
    yield rel, f"{rel}:{record.get('id', i)}", record[text_field], record.get("source")


def split_points(text: str, offsets: list[tuple[int, int]], max_tokens: int) -> list[int]:
    """Character positions at which to cut ``text`` so that each part has at most ``max_tokens`` tokens.

    A cut goes to the last paragraph break in the window's final quarter, else the last sentence end there,
    else the token boundary itself. ``offsets`` are the tokens' (start, end) character spans.

    >>> text = "aaaa bbbb.\\n\\ncccc dddd. eeee"
    >>> offs = [(0, 4), (4, 9), (9, 10), (10, 12), (12, 16), (16, 21), (21, 22), (22, 27)]
    >>> [text[a:b] for a, b in zip([0] + split_points(text, offs, 5), split_points(text, offs, 5) + [len(text)])]
    ['aaaa bbbb.\\n\\n', 'cccc dddd. eeee']
    """
    cuts, start_tok = [], 0
    while len(offsets) - start_tok > max_tokens:
        end_tok = start_tok + max_tokens  # the part is tokens [start_tok, end_tok)
        lo_char = offsets[start_tok + (3 * max_tokens) // 4][0]
        hi_char = offsets[end_tok][0]
        window = text[lo_char:hi_char]
        cut = None
        for sep in ("\n\n", ". ", "\n"):
            k = window.rfind(sep)
            if k >= 0:
                cut = lo_char + k + len(sep)
                break
        if cut is None:
            cut = hi_char
        # the first token that starts at or after the cut begins the next part
        next_tok = next(t for t in range(start_tok + 1, end_tok + 1) if offsets[t][0] >= cut)
        cuts.append(offsets[next_tok][0])
        start_tok = next_tok
    return cuts


def load_corpus(cfg, tokenizer, batch_size: int = 32) -> Corpus:
    """Read, measure, split and filter the documents of ``cfg`` (a ``DatagenConfig``).

    Documents are measured in batches: a fast tokenizer then spreads the work over all cores.
    """
    corpus = Corpus()
    if not cfg.documents_dir.is_dir():
        raise FileNotFoundError(
            f"documents_dir: {cfg.documents_dir} is not a folder; set it to the folder of "
            "your long documents (.txt, .md, .jsonl, .parquet)"
        )
    corpus.files = sum(1 for p in cfg.documents_dir.rglob("*") if p.is_file())
    batch: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for rel, doc_id, text, record_source in iter_raw(cfg.documents_dir, cfg.text_field, corpus.skipped):
        text = text.strip()
        if not text:
            corpus.skipped["empty"] += 1
            continue
        if doc_id in seen:  # ids must be unique: resuming tells finished documents by their id
            corpus.skipped["duplicate_id"] += 1
            continue
        seen.add(doc_id)
        batch.append((doc_id, source_of(rel, cfg.sources, record_source), text))
        if len(batch) >= batch_size:
            _measure(batch, cfg, tokenizer, corpus)
            batch = []
    _measure(batch, cfg, tokenizer, corpus)
    return corpus


def _measure(batch: list[tuple[str, str, str]], cfg, tokenizer, corpus: Corpus) -> None:
    if not batch:
        return
    counts = corpus.skipped
    lengths = [len(ids) for ids in tokenizer([t for _, _, t in batch], add_special_tokens=False)["input_ids"]]
    for (doc_id, source, text), n in zip(batch, lengths, strict=True):
        if n < cfg.min_tokens:
            counts["too_short"] += 1
        elif n <= cfg.max_tokens:
            corpus.documents.append(Document(doc_id, source, text, n))
        elif cfg.over_length == "skip":
            counts["too_long"] += 1
        else:
            offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            cuts = split_points(text, offsets, cfg.max_tokens)
            for k, (a, b) in enumerate(zip([0] + cuts, cuts + [len(text)], strict=True)):
                part = text[a:b]
                m = len(tokenizer(part, add_special_tokens=False)["input_ids"])
                if m < cfg.min_tokens:
                    counts["split_part_too_short"] += 1
                elif m > cfg.max_tokens:  # re-tokenising a cut text can differ by a token or two
                    counts["split_part_too_long"] += 1
                else:
                    corpus.documents.append(Document(f"{doc_id}#p{k}", source, part, m))


COMPARISON = "comparison"


def pair_text(a: str, b: str) -> str:
    """Two documents side by side in one user turn.

    >>> pair_text("A.", "B.")
    'Document 1:\\nA.\\n\\nDocument 2:\\nB.'
    """
    return f"Document 1:\n{a}\n\nDocument 2:\n{b}"


def make_pairs(documents: list[Document], n: int, max_tokens: int, seed: int, tokenizer) -> list[Document]:
    """Up to ``n`` multi-document items: two documents of the same source that fit ``max_tokens`` together.

    Deterministic for a corpus and seed (a resumed run builds the same pairs); each document is in at most one pair.
    """
    import random

    by_source: dict[str, list[Document]] = {}
    for d in documents:
        if not d.task_types:
            by_source.setdefault(d.source, []).append(d)
    rng = random.Random(seed)
    pairs: list[Document] = []
    for source in sorted(by_source):
        docs = sorted(by_source[source], key=lambda d: d.id)
        rng.shuffle(docs)
        used: set[str] = set()
        for i, a in enumerate(docs):
            for b in docs[i + 1 :]:
                if len(pairs) >= n:
                    return pairs
                if a.id in used or b.id in used or a.n_tokens + b.n_tokens + 16 > max_tokens:
                    continue
                text = pair_text(a.text, b.text)
                m = len(tokenizer(text, add_special_tokens=False)["input_ids"])
                if m <= max_tokens:
                    pairs.append(Document(f"compare:{a.id}|{b.id}", source, text, m, (COMPARISON,)))
                    used.update((a.id, b.id))
                    break
    return pairs
