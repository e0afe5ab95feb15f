"""Self-Instruct, the pure parts: the requests about one document, parsing, deduplication, answer filters.

For each document (following the LongAlign paper, with our own prompt texts):

1. draw ``types_per_document`` task types at random (seeded by the run seed and the document id, so a resumed
   run draws the same);
2. ask the teacher, with the whole document in context, for ``questions_asked`` tasks of that type, as JSON
   constrained by a schema (bounded strings and list, so even a weak model returns parseable JSON);
3. drop near-duplicate tasks, keep ``questions_kept`` at random;
4. ask the teacher to do each kept task with the whole document in context; the user turn of the sample is
   exactly that request: DOCUMENT + SEPARATOR + TASK.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from difflib import SequenceMatcher

SEPARATOR = "\n\n"
PROPOSE_FORMAT = (
    '\n\nReply with a JSON object of the form {{"questions": ["...", "..."]}} holding exactly {n} '
    "questions, each a single line."
)

_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry, (but )?i|i can(no|')t|i cannot|i'?m (not able|unable)|i am (not able|unable)"
    r"|as an ai\b|i apologi[sz]e|unfortunately,? i (can(no|')t|am unable))",
    re.IGNORECASE,
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def rng_for(seed: int, doc_id: str, purpose: str) -> random.Random:
    """A random generator that depends only on the run seed, the document and the purpose (stable on resume)."""
    digest = hashlib.sha256(f"{seed}\0{doc_id}\0{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def propose_prompt(template: str, n: int) -> str:
    """The instruction that follows the document when asking for tasks.

    >>> propose_prompt("Write {n} questions.", 3).splitlines()[0]
    'Write 3 questions.'
    """
    return template.strip().replace("{n}", str(n)) + PROPOSE_FORMAT.format(n=n)


def questions_schema(n: int, max_chars: int) -> dict:
    """JSON schema of a proposal: exactly ``n`` non-empty strings of at most ``max_chars`` characters."""
    return {
        "type": "object",
        "properties": {
            "questions": {
                "type": "array",
                "minItems": n,
                "maxItems": n,
                "items": {"type": "string", "minLength": 8, "maxLength": max_chars},
            }
        },
        "required": ["questions"],
        "additionalProperties": False,
    }


def constrained_output(mode: str, schema: dict) -> dict:
    """Request arguments that make the server follow ``schema``.

    ``structured_outputs`` is vLLM's own field (vLLM >= 0.11); ``response_format`` is the OpenAI API's
    ``json_schema`` format, which vLLM and other OpenAI-compatible servers accept; ``none`` sends no constraint
    (the proposal is then parsed as JSON or as a numbered list).

    >>> sorted(constrained_output("response_format", {})["response_format"])
    ['json_schema', 'type']
    """
    if mode == "structured_outputs":
        return {"extra_body": {"structured_outputs": {"json": schema}}}
    if mode == "response_format":
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "tasks", "schema": schema, "strict": True},
            }
        }
    return {}


_NUMBERED = re.compile(r"^\s*(?:\d{1,2}\s*[:.)]|[-*])\s+(.+)$", re.MULTILINE)


def parse_questions(text: str) -> list[str]:
    """The tasks in a proposal: the JSON asked for, else a numbered list; [] when neither.

    Control characters are removed and whitespace collapsed (weak models pad JSON with them).

    >>> parse_questions('{ "questions" : ["Who wrote\\x17 it?  ", " Why  now? "] }')
    ['Who wrote it?', 'Why now?']
    >>> parse_questions('Here they are:\\n1: Who wrote it?\\n2. Why now?')
    ['Who wrote it?', 'Why now?']
    >>> parse_questions('{"questions": ["cut off')
    []
    """
    try:
        obj = json.loads(text, strict=False)
    except ValueError:
        obj = None
    items = obj.get("questions") if isinstance(obj, dict) else None
    if not isinstance(items, list):
        items = [] if text.lstrip().startswith("{") else _NUMBERED.findall(text)
    out = []
    for q in items:
        if isinstance(q, str):
            q = " ".join(_CONTROL.sub("", q).split())
            if q:
                out.append(q)
    return out


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def dedup(tasks: list[str], threshold: float) -> list[str]:
    """Tasks in order, without those at least ``threshold`` similar to an earlier one (case and punctuation ignored).

    >>> dedup(["What is X?", "what is x", "Why does Y happen?"], 0.85)
    ['What is X?', 'Why does Y happen?']
    """
    kept: list[str] = []
    normed: list[str] = []
    for t in tasks:
        n = _norm(t)
        if not n or any(n == m or SequenceMatcher(None, n, m).ratio() >= threshold for m in normed):
            continue
        kept.append(t)
        normed.append(n)
    return kept


def answer_problem(
    answer: str | None, finish_reason: str | None, min_chars: int, keep_truncated: bool = False
) -> str | None:
    """Why an answer is unusable (a counted reason), or None when it is kept.

    >>> answer_problem("I'm sorry, but I can't help with that request.", "stop", 10)
    'refusal'
    >>> answer_problem("  ", "stop", 10), answer_problem("Yes.", "stop", 10)
    ('empty_answer', 'short_answer')
    >>> answer_problem("The treaty was signed in 1648 at Muenster.", "stop", 10) is None
    True
    >>> answer_problem("The treaty was signed in", "length", 10)
    'truncated_answer'
    """
    text = (answer or "").strip()
    if not text:
        return "empty_answer"
    if _REFUSAL.match(text):
        return "refusal"
    if len(text) < min_chars:
        return "short_answer"
    if finish_reason == "length" and not keep_truncated:
        return "truncated_answer"
    return None


def user_turn(document: str, task: str) -> str:
    """The user turn of a sample (and of the answering request).

    >>> user_turn("DOC", "Why?")
    'DOC\\n\\nWhy?'
    """
    return document + SEPARATOR + task
