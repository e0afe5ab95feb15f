"""LongBench-Chat: the served checkpoint answers long-document questions; the judge rates each answer 1-10.

The benchmark cannot be downloaded at run time: it is read from a local file, the published
``test_cases.json`` (a JSON list) or JSONL (one case per line), of cases::

    {"idx": 1, "prompt": "<long document + question>", "query": "<the short question>", "answer": "<reference>"}

and a few-shot file: a JSON list, entry ``idx - 1`` holding 3 ``{"answer": str, "score": int}`` for case
``idx`` (the published benchmark's ``few_shots.json``). Prompts longer than the model's context are
middle-truncated with the model's own tokenizer (the head and the tail are kept, where documents put their
framing and the question), and counted.

The score is the mean over scored answers on the paper's 1-10 scale (LongAlign-7B: 6.38, GPT-4: 8.40);
answers the judge could not score are listed and counted, never averaged in.

Every answer and score is appended to ``OUTPUT_DIR/obtained.jsonl`` as soon as it arrives (``Obtained``): an
interrupted evaluation run again asks neither for them again, as long as the checkpoint and the settings
that produced them are unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from longalign_trainer.chat_client import ContextOverflow, RequestFailed
from longalign_trainer.chat_tokens import prompt_tokens
from longalign_trainer.config_files import ConfigError
from longalign_trainer.evaluate.judge import Judge

MARGIN = 8  # tokens: decoded-then-re-encoded text may tokenise slightly differently at the cut


@dataclass
class Case:
    idx: int
    prompt: str
    query: str
    answer: str
    examples: list[dict]


def load_benchmark(
    path: Path, few_shot_path: Path | None, limit: int | None = None, examples_per_case: int | None = None
) -> list[Case]:
    """The cases of a LongBench-Chat file (JSON list or JSONL) with their scored examples.

    ``examples_per_case``: how many examples each case must have (3 for the published prompt).
    ``ConfigError`` names the file, the bad entry and the fix.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(
            f"longbench_chat.path: cannot read {path} ({e.strerror or e}); bring test_cases.json (or a JSONL of cases)"
        ) from None
    records = _records(path, text)
    shots: list = []
    if few_shot_path is not None:
        try:
            shots = json.loads(Path(few_shot_path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"longbench_chat.few_shot_path: cannot read {few_shot_path}: {e}") from None
        if not isinstance(shots, list):
            raise ConfigError(f"longbench_chat.few_shot_path: {few_shot_path} must hold a JSON list")
    cases = []
    for where, rec in records:
        row = rec if isinstance(rec, dict) else {}
        try:
            case = Case(int(row["idx"]), str(row["prompt"]), str(row["query"]), str(row["answer"]), [])
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"longbench_chat.path: {path} {where}: expected idx, prompt, query, answer ({e!r})"
            ) from None
        if shots:
            if not 1 <= case.idx <= len(shots):
                raise ConfigError(
                    f"longbench_chat.few_shot_path: no examples for idx {case.idx} ({len(shots)} entries)"
                )
            examples = shots[case.idx - 1]
            if not (
                isinstance(examples, list)
                and all(isinstance(e, dict) and "answer" in e and "score" in e for e in examples)
            ):
                raise ConfigError(
                    f"longbench_chat.few_shot_path: entry {case.idx - 1} must be a list of {{answer, score}}"
                )
            if examples_per_case is not None and len(examples) != examples_per_case:
                raise ConfigError(
                    f"longbench_chat.few_shot_path: entry {case.idx - 1} has {len(examples)} "
                    f"examples; the published judge prompt takes {examples_per_case}"
                )
            case.examples = examples
        cases.append(case)
    if not cases:
        raise ConfigError(f"longbench_chat.path: {path} holds no cases")
    return cases[:limit] if limit else cases


def _records(path: Path, text: str) -> list[tuple[str, object]]:
    """``(where, record)`` of a JSON list (the published test_cases.json) or of JSONL lines."""
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"longbench_chat.path: {path} is not valid JSON ({e})") from None
        return [(f"entry {n}", item) for n, item in enumerate(items)]
    out: list[tuple[str, object]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((f"line {n}", json.loads(line)))
            except ValueError as e:
                raise ConfigError(f"longbench_chat.path: {path} line {n}: not JSON ({e})") from None
    return out


def middle_truncate(tokenizer, text: str, budget: int) -> str:
    """``text`` cut to about ``budget`` tokens: the first and last halves, the middle dropped.

    >>> class Chars:  # one token per character
    ...     def __call__(self, t, add_special_tokens=False): return {"input_ids": [ord(c) for c in t]}
    ...     def decode(self, ids): return "".join(map(chr, ids))
    >>> middle_truncate(Chars(), "abcdefghij", 4), middle_truncate(Chars(), "abc", 4)
    ('abij', 'abc')
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= budget:
        return text
    head = budget // 2
    return tokenizer.decode(ids[:head]) + tokenizer.decode(ids[len(ids) - (budget - head) :])


def fit_prompt(tokenizer, prompt: str, context_len: int, answer_tokens: int) -> tuple[str, bool]:
    """The prompt, middle-truncated when it and the answer do not fit ``context_len``; and whether it was cut."""
    room = context_len - answer_tokens
    overhead = prompt_tokens(tokenizer, "")
    if prompt_tokens(tokenizer, prompt) <= room:
        return prompt, False
    budget = room - overhead - MARGIN
    if budget <= 0:
        raise ConfigError(f"model.max_tokens ({answer_tokens}) leaves no room for a prompt in {context_len} tokens")
    for _ in range(4):  # re-encoding the cut text can add a token or two: shrink until it fits
        cut = middle_truncate(tokenizer, prompt, budget)
        excess = prompt_tokens(tokenizer, cut) - room
        if excess <= 0:
            return cut, True
        budget -= excess + MARGIN
    raise RuntimeError("could not truncate a prompt to the model's context")


class Obtained:
    """Answers and scores already obtained, kept in a JSONL file so that a rerun does not ask for them again.

    Each record is ``{"key": ..., "kind": ..., "id": ..., "value": ...}``; ``key`` fingerprints what produced it
    (the checkpoint's files and the settings), so a changed checkpoint or judge asks again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.known: dict[tuple[str, str, str], object] = {}
        self.reused = 0  # values found from an earlier run and used again
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.known[(rec["key"], rec["kind"], str(rec["id"]))] = rec["value"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def get(self, key: str, kind: str, id: object) -> dict | None:
        """The value obtained before (counted as reused), or None."""
        value = self.known.get((key, kind, str(id)))
        if isinstance(value, dict):
            self.reused += 1
            return value
        return None

    def put(self, key: str, kind: str, id: object, value: object) -> None:
        """Keep a value (written through at once: a kill loses nothing obtained)."""
        self.known[(key, kind, str(id))] = value
        self.file.write(json.dumps({"key": key, "kind": kind, "id": id, "value": value}, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def fingerprint(*parts: object) -> str:
    """A short stable hash of JSON-able parts.

    >>> fingerprint("a", {"b": 1}) == fingerprint("a", {"b": 1}) != fingerprint("a", {"b": 2})
    True
    """
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


async def evaluate(
    cases: list[Case],
    model,
    judge: Judge,
    tokenizer,
    context_len: int,
    answer_tokens: int,
    on_done=lambda: None,
    obtained: Obtained | None = None,
    answer_key: str = "",
    grade_key: str = "",
) -> dict:
    """Answer and grade every case (concurrently, bounded by the clients); the LongBench-Chat results.

    With ``obtained``, answers (under ``answer_key``) and grades (under ``grade_key``) found there are reused
    and new ones kept: judged answers and answers without a valid rating count as obtained, failures to
    reach a server do not.
    """

    async def one(case: Case) -> dict:
        prompt, truncated = fit_prompt(tokenizer, case.prompt, context_len, answer_tokens)
        row = {
            "idx": case.idx,
            "query": case.query,
            "truncated": truncated,
            "prediction": None,
            "score": None,
            "judge_scores": [],
            "judge_queries": 0,
            "unscored_reason": None,
        }
        answer = obtained.get(answer_key, "answer", case.idx) if obtained else None
        if answer is None:
            try:
                c = await model.complete([{"role": "user", "content": prompt}], max_tokens=answer_tokens, endpoint=0)
            except (RequestFailed, ContextOverflow) as e:
                row["unscored_reason"] = f"no_prediction: {e}"[:300]
                on_done()
                return row
            answer = {"prediction": c.text, "prompt_tokens": c.prompt_tokens, "finish_reason": c.finish_reason}
            if obtained:
                obtained.put(answer_key, "answer", case.idx, answer)
        row.update(answer)
        verdict = obtained.get(grade_key, "grade", case.idx) if obtained else None
        if verdict is None:
            grade = await judge.grade(case.idx, case.query, case.answer, case.examples, answer["prediction"])
            verdict = {
                "score": grade.score,
                "judge_scores": grade.scores,
                "judge_queries": grade.queries,
                "unscored_reason": grade.reason,
                "judge_replies": grade.replies[-2:],
                "judged_answer_chars": grade.judged_answer_chars,
            }
            if obtained and not (grade.reason or "").startswith("judge_unavailable"):
                obtained.put(grade_key, "grade", case.idx, verdict)
        row.update(verdict)
        on_done()
        return row

    rows = await asyncio.gather(*(one(c) for c in cases))
    scores = [r["score"] for r in rows if r["score"] is not None]
    return {
        "score": round(sum(scores) / len(scores), 3) if scores else None,
        "cases": len(rows),
        "scored": len(scores),
        "unscored": len(rows) - len(scores),
        "truncated": sum(r["truncated"] for r in rows),
        "judge_unavailable": sum(1 for r in rows if (r["unscored_reason"] or "").startswith("judge_unavailable")),
        "per_question": sorted(rows, key=lambda r: r["idx"]),
    }
