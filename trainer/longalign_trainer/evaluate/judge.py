"""The LLM judge of LongBench-Chat: our prompt in the style of the LongAlign paper, robust score parsing, retries.

The judge never sees the long document: it gets the short question, the expert's reference answer, three
answers to the same question with human scores (in a shuffled order, different per run and per repeat), and
the answer to rate. It replies with an integer rating from 1 to 10 written as ``[[N]]``.

A reply without a valid rating is asked again (``judge.attempts`` queries in all); after that the answer is
*unscored*, never given a number we made up. Transient request errors are retried by the client
(``chat_client.ChatClient``: backoff, ``Retry-After``); when they persist the answer is unscored too, with
the reason recorded.
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import dataclass, field
from typing import Any

from longalign_trainer.chat_client import ChatClient, RequestFailed

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
TO_RATE = ("\nNow rate this answer by the same principles and examples:\n"
           "\n[Answer]\n{answer}\n[End of answer]\nRating: ")

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
        text += EXAMPLES_HEADER + "".join(EXAMPLE.format(answer=e["answer"].strip(), score=e["score"])
                                          for e in examples)
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


class Judge:
    """Scores answers with the configured judge model; see the module docstring."""

    def __init__(self, cfg, client: ChatClient, seed: int, max_consecutive_failures: int = 8) -> None:
        self.cfg, self.client, self.seed = cfg, client, seed
        # after this many answers in a row could not be judged for lack of a server, stop asking (a judge that
        # is down or out of quota would otherwise be retried with backoff for every remaining answer)
        self.max_consecutive_failures = max_consecutive_failures
        self.consecutive_failures = 0
        # answers waiting for a slot see the verdict of those before them (the client bounds the same number)
        self.slots = asyncio.Semaphore(client.engine.concurrency)
        self.constraint: dict[str, Any] = ({"extra_body": {"structured_outputs": {"regex": SCORE_REGEX}}}
                           if cfg.constrain == "regex" else {})

    async def grade(self, case: object, question: str, reference: str, examples: list[dict], answer: str) -> Grade:
        """``judge.repeats`` scores of ``answer`` (each up to ``judge.attempts`` queries), averaged.

        Raises ``FatalRequestError`` (bad key, unknown model): every other answer would fail alike.
        """
        async with self.slots:
            if self.consecutive_failures >= self.max_consecutive_failures:
                return Grade(score=None, reason=f"judge_unavailable: not asked after {self.consecutive_failures} "
                             "answers in a row could not be judged")
            return await self._grade(case, question, reference, examples, answer)

    async def _grade(self, case: object, question: str, reference: str, examples: list[dict], answer: str) -> Grade:
        grade = Grade(score=None)
        for repeat in range(self.cfg.repeats):
            prompt = build_prompt(question, reference, shuffled(examples, self.seed, case, repeat), answer)
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
            for _ in range(self.cfg.attempts):
                grade.queries += 1
                try:
                    c = await self.client.complete(messages, max_tokens=self.cfg.max_tokens, endpoint=0,
                                                   **self.constraint)
                except RequestFailed as e:
                    self.consecutive_failures += 1
                    grade.reason = f"judge_unavailable: {e}"[:300]
                    return grade
                self.consecutive_failures = 0
                grade.replies.append(c.text[:2000])
                score = parse_score(c.text)
                if score is not None:
                    grade.scores.append(score)
                    break
        if grade.scores:
            grade.score = sum(grade.scores) / len(grade.scores)
        else:
            grade.reason = "no_valid_score"
        return grade
