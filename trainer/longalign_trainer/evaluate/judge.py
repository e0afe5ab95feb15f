"""The LLM judge of LongBench-Chat: the published prompt (default) or ours, score parsing, retries.

**Published** (``longbench_chat.judge_prompt: published``): exactly what THUDM/LongAlign's
``LongBench_Chat/eval.py`` does, so scores compare with the paper's. The user brings that folder's
``prompt_fs.txt`` (the template; never shipped here) and ``few_shots.json``. The template is filled with
``str.format`` and positional fields: the question, the reference answer, the case's three few-shot answers
and scores as (answer, score) pairs in their published order, then the prediction (as eval.py reads it back
from its predictions file: stripped, newlines as spaces). The system prompt is eval.py's, the temperature 0,
and the score the first number inside the last ``[[...]]`` of the reply.

**Ours** (``judge_prompt: ours``): our own instructions in the style of the paper; the three examples in a
shuffled order (different per run and per repeat); the rating an integer 1-10 written as ``[[N]]``.

Either way the judge never sees the long document.

A reply without a valid rating is asked again (``judge.attempts`` queries in all); after that the answer is
*unscored*, never given a number we made up. A judge prompt longer than the judge's context has its long part,
the answer, cut in the middle (head and tail kept, halved until it fits; ``judged_answer_chars`` in the results
says how much the judge saw); when the rest of the prompt alone does not fit, that answer is unscored with the
reason, and the other answers are scored as usual. Transient request errors are retried by
the client (``chat_client.ChatClient``: backoff, ``Retry-After``); when they persist the answer is unscored too, with
the reason recorded.
"""

from __future__ import annotations

import asyncio
import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longalign_trainer.chat_client import ChatClient, ContextOverflow, RequestFailed
from longalign_trainer.config_files import ConfigError

PUBLISHED_SYSTEM = "You're a good assistant at evaluating the quality of texts."  # eval.py's system prompt
PUBLISHED_FIELDS = 9  # question, reference, 3 x (answer, score), prediction

SYSTEM = "You grade answers carefully and impartially, following the instructions you are given."

INSTRUCTIONS = """\
[Task]
Grade the AI assistant's answer to the user's question below. The question was asked about a long document \
that you do not see; an expert has written a reference answer from it. Judge correctness first, then \
helpfulness, relevance and precision:
1. Compare the assistant's answer with the reference answer and find every mistake in it.
2. Decide how much each mistake matters for answering the question.
3. Decide how directly and completely the answer gives the user what was asked.
4. Check any information the answer adds beyond the reference: take points off when it is wrong or off the \
point. Length alone earns nothing.

Rate the answer with one integer from 1 (wrong or useless) to 10 (as good as the reference answer), written \
in double square brackets at the end of your reply, for example: [[6]].

[Question]
{question}

[Reference answer]
{reference}
[End of reference answer]
"""

EXAMPLES_HEADER = "\nHere are other answers to the same question, with the ratings experts gave them:\n"
EXAMPLE = "\n[Answer]\n{answer}\n[End of answer]\nRating: [[{score}]]\n"
TO_RATE = "\nNow rate this answer by the same principles and examples:\n\n[Answer]\n{answer}\n[End of answer]\nRating: "

# The rating format, for judges that can be constrained to it (vLLM structured outputs).
SCORE_REGEX = r"\[\[(10|[1-9])\]\]"

_BRACKETS = re.compile(r"\[\[\s*([^\[\]]{1,20}?)\s*\]\]")
_NUMBER = re.compile(r"(?<![\d.])(\d{1,2}(?:\.\d+)?)(?![\d.])")
_LOOSE = re.compile(r"(?:rating|score)\s*(?:is|of|:|=)?\s*\**\s*(\d{1,2}(?:\.\d+)?)(?:\s*/\s*10)?\b", re.IGNORECASE)


def build_prompt(question: str, reference: str, examples: list[dict], answer: str) -> str:
    """The judge's user turn for one answer; ``examples`` are ``{answer, score}`` in the order to show them.

    >>> p = build_prompt("Who won?", "Ann won.", [{"answer": "Bob", "score": 1}], "Ann")
    >>> p.index("[Question]\\nWho won?") < p.index("Rating: [[1]]") < p.rindex("[Answer]\\nAnn\\n")
    True
    """
    text = INSTRUCTIONS.format(question=question.strip(), reference=reference.strip())
    if examples:
        text += EXAMPLES_HEADER + "".join(
            EXAMPLE.format(answer=e["answer"].strip(), score=e["score"]) for e in examples
        )
    return text + TO_RATE.format(answer=answer.strip())


def parse_score(reply: str | None) -> float | None:
    """The rating in a judge's reply (1..10), or None when it holds no valid one.

    The last ``[[...]]`` wins (a judge may quote the examples' ratings before its own); without brackets, a
    final "Rating: N" or "Score: N/10" is accepted. Out-of-range numbers are invalid, never clipped.

    >>> parse_score("The answer misses the date. [[4]]"), parse_score("Rating: [[ 7 ]]"), parse_score("[[8.5]]")
    (4.0, 7.0, 8.5)
    >>> parse_score("Examples got [[10]] and [[2]]; this one: [[3]]"), parse_score("Rating: 6/10")
    (3.0, 6.0)
    >>> [parse_score(s) for s in ("[[11]]", "[[0]]", "good answer", "", None, "[[seven]]", "[[4]] [[x]]")]
    [None, None, None, None, None, None, None]
    """
    if not reply:
        return None
    brackets = _BRACKETS.findall(reply)
    if brackets:
        numbers = _NUMBER.findall(brackets[-1])
        value = float(numbers[0]) if len(numbers) == 1 else None
    else:
        loose = _LOOSE.findall(reply)
        value = float(loose[-1]) if loose else None
    return value if value is not None and 1.0 <= value <= 10.0 else None


def load_template(path: Path) -> str:
    """The published judge template (``prompt_fs.txt``), checked to take eval.py's 9 positional fields.

    ``ConfigError`` names the file and the fix when it cannot be read or has another shape.
    """
    try:
        template = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(
            f"longbench_chat.judge_prompt_path: cannot read {path} ({e.strerror or e}); bring "
            "prompt_fs.txt from THUDM/LongAlign's LongBench_Chat/ folder"
        ) from None
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        fields, problem = [], str(e)
    else:
        problem = ""
    if problem or len(fields) != PUBLISHED_FIELDS or any(fields):
        raise ConfigError(
            f"longbench_chat.judge_prompt_path: {path} is not the published judge template "
            f"({problem or f'{len(fields)} fields'}; prompt_fs.txt has {PUBLISHED_FIELDS} "
            "positional {} fields); bring prompt_fs.txt from THUDM/LongAlign's LongBench_Chat/"
        )
    return template


def build_published_prompt(template: str, question: str, reference: str, examples: list[dict], prediction: str) -> str:
    """The judge's user turn as eval.py builds it: ``template.format(question, reference, a1, s1, a2, s2, a3,
    s3, prediction)``, the examples in their published order, untouched.

    >>> t = "Q: {}\\nR: {}\\n{} [[{}]]\\n{} [[{}]]\\n{} [[{}]]\\nA: {}\\nRating:"
    >>> print(build_published_prompt(t, "Who won?", "Ann.", [{"answer": " Bob", "score": 1},
    ...     {"answer": "Ann", "score": 10}, {"answer": "?", "score": 2}], "  Ann\\nwon.\\n"))
    Q: Who won?
    R: Ann.
     Bob [[1]]
    Ann [[10]]
    ? [[2]]
    A: Ann won.
    Rating:
    """
    pairs = [value for e in examples for value in (e["answer"], e["score"])]
    return template.format(question, reference, *pairs, published_prediction(prediction))


def published_prediction(text: str) -> str:
    """The prediction as eval.py reads it back from its predictions file: one line, stripped.

    >>> published_prediction("  first line\\nsecond line \\n")
    'first line second line'
    """
    return text.strip().replace("\n", " ").strip()


_PUBLISHED_BRACKETS = re.compile(r"\[\[([^\]]+)\]\]")
_PUBLISHED_NUMBER = re.compile(r"\d+\.\d+|\d+")


def published_score(reply: str | None) -> float | None:
    """eval.py's score: the first number inside the last ``[[...]]`` of the reply (None when there is none).

    >>> published_score("Examples got [[10]]; this one: [[3.5]]"), published_score("[[Rating: 7/10]]")
    (3.5, 7.0)
    >>> published_score("no rating"), published_score("[[none]]"), published_score(None)
    (None, None, None)
    """
    found = _PUBLISHED_BRACKETS.findall(reply or "")
    numbers = _PUBLISHED_NUMBER.findall(found[-1]) if found else []
    return float(numbers[0]) if numbers else None


MIN_CUT_ANSWER_CHARS = 400  # an answer cut shorter than this would be judged on too little of itself


def middle_cut(answer: str) -> str | None:
    """``answer`` halved by dropping its middle (head and tail kept, joined by `` ... ``); None when it is
    already too short to cut further (``MIN_CUT_ANSWER_CHARS``).

    >>> middle_cut("a" * 300 + "b" * 300 + "c" * 300) == "a" * 225 + " ... " + "c" * 225
    True
    >>> middle_cut("short answer") is None
    True
    """
    if len(answer) < 2 * MIN_CUT_ANSWER_CHARS:
        return None
    keep = len(answer) // 2
    return answer[: keep // 2] + " ... " + answer[len(answer) - (keep - keep // 2) :]


def shuffled(examples: list[dict], seed: int, case: object, repeat: int) -> list[dict]:
    """The examples in a random order fixed by (run seed, case, repeat): the paper shuffles them per run.

    >>> ex = [{"answer": a, "score": s} for a, s in (("a", 1), ("b", 5), ("c", 9))]
    >>> shuffled(ex, 0, 1, 0) == shuffled(ex, 0, 1, 0), sorted(e["answer"] for e in shuffled(ex, 0, 1, 1))
    (True, ['a', 'b', 'c'])
    """
    out = list(examples)
    random.Random(f"{seed}:{case}:{repeat}").shuffle(out)
    return out


@dataclass
class Grade:
    """The judge's verdict on one answer: ``score`` is None when unscored (``reason`` says why)."""

    score: float | None
    scores: list[float] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    queries: int = 0
    reason: str | None = None
    judged_answer_chars: int | None = None
    """Set when the answer was too long for the judge's context: the length of the middle-cut answer it judged."""


class Judge:
    """Scores answers with the configured judge model; see the module docstring."""

    def __init__(
        self, cfg, client: ChatClient, seed: int, max_consecutive_failures: int = 8, template: str | None = None
    ) -> None:
        self.cfg, self.client, self.seed = cfg, client, seed
        self.template = template  # the published prompt_fs.txt; None: our prompt
        # after this many answers in a row could not be judged for lack of a server, stop asking (a judge that
        # is down or out of quota would otherwise be retried with backoff for every remaining answer)
        self.max_consecutive_failures = max_consecutive_failures
        self.consecutive_failures = 0
        # answers waiting for a slot see the verdict of those before them (the client bounds the same number)
        self.slots = asyncio.Semaphore(client.engine.concurrency)
        self.constraint: dict[str, Any] = (
            {"extra_body": {"structured_outputs": {"regex": SCORE_REGEX}}} if cfg.constrain == "regex" else {}
        )

    async def grade(self, case: object, question: str, reference: str, examples: list[dict], answer: str) -> Grade:
        """``judge.repeats`` scores of ``answer`` (each up to ``judge.attempts`` queries), averaged.

        Raises ``FatalRequestError`` (bad key, unknown model): every other answer would fail alike.
        """
        async with self.slots:
            if self.consecutive_failures >= self.max_consecutive_failures:
                return Grade(
                    score=None,
                    reason=f"judge_unavailable: not asked after {self.consecutive_failures} "
                    "answers in a row could not be judged",
                )
            return await self._grade(case, question, reference, examples, answer)

    async def _grade(self, case: object, question: str, reference: str, examples: list[dict], answer: str) -> Grade:
        grade = Grade(score=None)
        for repeat in range(self.cfg.repeats):
            messages = self.messages(case, question, reference, examples, answer, repeat)
            attempts = 0
            while attempts < self.cfg.attempts:
                grade.queries += 1
                try:
                    c = await self.client.complete(
                        messages, max_tokens=self.cfg.max_tokens, endpoint=0, **self.constraint
                    )
                except RequestFailed as e:
                    self.consecutive_failures += 1
                    grade.reason = f"judge_unavailable: {e}"[:300]
                    return grade
                except ContextOverflow as e:
                    cut = middle_cut(answer)
                    if cut is None:  # the question, reference and examples alone overflow; the others go on
                        grade.reason = (
                            f"judge_context_overflow: the judge prompt ({len(messages[-1]['content'])} "
                            f"characters) does not fit the judge's context: {e}"
                        )[:300]
                        return grade
                    answer = cut  # the long part is the answer: judge its head and tail, as a long input is cut
                    grade.judged_answer_chars = len(answer)
                    messages = self.messages(case, question, reference, examples, answer, repeat)
                    continue
                attempts += 1
                self.consecutive_failures = 0
                grade.replies.append(c.text[:2000])
                score = published_score(c.text) if self.template is not None else parse_score(c.text)
                if score is not None:
                    grade.scores.append(score)
                    break
        if grade.scores:
            grade.score = sum(grade.scores) / len(grade.scores)
        else:
            grade.reason = "no_valid_score"
        return grade

    def messages(
        self, case: object, question: str, reference: str, examples: list[dict], answer: str, repeat: int
    ) -> list[dict]:
        """The judge's chat for one score: the published prompt as eval.py sends it, or ours."""
        if self.template is not None:
            prompt = build_published_prompt(self.template, question, reference, examples, answer)
            return [{"role": "system", "content": PUBLISHED_SYSTEM}, {"role": "user", "content": prompt}]
        prompt = build_prompt(question, reference, shuffled(examples, self.seed, case, repeat), answer)
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
