"""LongBench-Chat: the served checkpoint answers long-document questions; the judge rates each answer 1-10.

The benchmark cannot be downloaded at run time: it is read from a local JSONL file, one case per line::

    {"idx": 1, "prompt": "<long document + question>", "query": "<the short question>", "answer": "<reference>"}

and an optional few-shot file: a JSON list, entry ``idx - 1`` holding 3 ``{"answer": str, "score": int}`` for
case ``idx`` (the published benchmark's ``few_shots.json``). Prompts longer than the model's context are
middle-truncated with the model's own tokenizer (the head and the tail are kept, where documents put their
framing and the question), and counted.

The score is the mean over scored answers on the paper's 1-10 scale (LongAlign-7B: 6.38, GPT-4: 8.40);
answers the judge could not score are listed and counted, never averaged in.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

from longalign_trainer.chat_tokens import prompt_tokens
from longalign_trainer.chat_client import ContextOverflow, RequestFailed
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


def load_benchmark(path: Path, few_shot_path: Path | None, limit: int | None = None) -> list[Case]:
    """The cases of a LongBench-Chat file with their scored examples; ``ConfigError`` names a bad line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"longbench_chat.path: cannot read {path}: {e}") from None
    shots: list = []
    if few_shot_path is not None:
        try:
            shots = json.loads(Path(few_shot_path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"longbench_chat.few_shot_path: cannot read {few_shot_path}: {e}") from None
        if not isinstance(shots, list):
            raise ConfigError(f"longbench_chat.few_shot_path: {few_shot_path} must hold a JSON list")
    cases = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            case = Case(int(rec["idx"]), str(rec["prompt"]), str(rec["query"]), str(rec["answer"]), [])
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"longbench_chat.path: {path} line {n}: expected idx, prompt, query, answer ({e!r})") from None
        if shots:
            if not 1 <= case.idx <= len(shots):
                raise ConfigError(f"longbench_chat.few_shot_path: no examples for idx {case.idx} "
                                  f"({len(shots)} entries)")
            examples = shots[case.idx - 1]
            if not (isinstance(examples, list) and all(isinstance(e, dict) and "answer" in e and "score" in e
                                                        for e in examples)):
                raise ConfigError(f"longbench_chat.few_shot_path: entry {case.idx - 1} must be a list of "
                                  "{answer, score}")
            case.examples = examples
        cases.append(case)
    if not cases:
        raise ConfigError(f"longbench_chat.path: {path} holds no cases")
    return cases[:limit] if limit else cases


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
    return tokenizer.decode(ids[:head]) + tokenizer.decode(ids[len(ids) - (budget - head):])


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


async def evaluate(cases: list[Case], model, judge: Judge, tokenizer, context_len: int, answer_tokens: int,
                   on_done=lambda: None) -> dict:
    """Answer and grade every case (concurrently, bounded by the clients); the LongBench-Chat results."""

    async def one(case: Case) -> dict:
        prompt, truncated = fit_prompt(tokenizer, case.prompt, context_len, answer_tokens)
        row = {"idx": case.idx, "query": case.query, "truncated": truncated, "prediction": None,
               "score": None, "judge_scores": [], "judge_queries": 0, "unscored_reason": None}
        try:
            c = await model.complete([{"role": "user", "content": prompt}], max_tokens=answer_tokens, endpoint=0)
            row.update(prediction=c.text, prompt_tokens=c.prompt_tokens, finish_reason=c.finish_reason)
        except (RequestFailed, ContextOverflow) as e:
            row["unscored_reason"] = f"no_prediction: {e}"[:300]
            on_done()
            return row
        grade = await judge.grade(case.idx, case.query, case.answer, case.examples, c.text)
        row.update(score=grade.score, judge_scores=grade.scores, judge_queries=grade.queries,
                   unscored_reason=grade.reason, judge_replies=grade.replies[-2:])
        on_done()
        return row

    rows = await asyncio.gather(*(one(c) for c in cases))
    scores = [r["score"] for r in rows if r["score"] is not None]
    return {
        "score": round(sum(scores) / len(scores), 3) if scores else None,
        "cases": len(rows), "scored": len(scores), "unscored": len(rows) - len(scores),
        "truncated": sum(r["truncated"] for r in rows),
        "judge_unavailable": sum(1 for r in rows if (r["unscored_reason"] or "").startswith("judge_unavailable")),
        "per_question": sorted(rows, key=lambda r: r["idx"]),
    }
