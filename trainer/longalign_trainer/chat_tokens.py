"""Count the tokens of a chat prompt as an OpenAI-compatible server (vLLM) will count them.

Data generation and evaluation both have to fit long documents into a server's context before sending them:
they measure with the served model's own tokenizer and chat template.
"""

from __future__ import annotations


def prompt_tokens(tokenizer, user_content: str, system: str | None = None) -> int:
    """Tokens of a one-turn chat prompt (with an optional system turn), generation prompt included."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_content}]
    return chat_tokens(tokenizer, messages, add_generation_prompt=True)


def chat_tokens(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> int:
    """Tokens of ``messages`` through the tokenizer's chat template (or a per-turn estimate without one)."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)
    # no chat template: the text alone, plus a few tokens per turn for the server's default framing
    return sum(len(tokenizer(m["content"])["input_ids"]) + 8 for m in messages)
