"""What a valid LongAlign training record is: the one definition data generation and training both apply.

A record is one JSON object per line with a ``messages`` list of ``{"role", "content"}`` turns:

* roles are ``system``, ``user`` or ``assistant``; a ``system`` turn may only come first;
* every ``assistant`` turn answers a ``user`` turn right before it (so the first turn after an optional
  system turn is the user's, and two assistant turns never follow each other);
* at least one ``assistant`` turn (the only tokens trained on);
* every ``content`` is a string with something besides whitespace.

``check_record`` says why a record breaks these rules, in words a user can act on, or None when it is valid.
"""

from __future__ import annotations

ROLES = ("system", "user", "assistant")


def check_record(record: object) -> str | None:
    """Why a parsed JSONL record is not a valid LongAlign conversation, or None when it is.

    >>> ok = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    >>> check_record({"messages": ok}), check_record({"messages": [{"role": "system", "content": "s"}, *ok]})
    (None, None)
    >>> check_record({"messages": [{"role": "assistant", "content": "yo"}, *ok]})
    'message 0: an assistant turn must follow a user turn'
    >>> check_record({"messages": [*ok, {"role": "assistant", "content": "again"}]})
    'message 2: an assistant turn must follow a user turn'
    >>> check_record({"messages": [*ok, {"role": "system", "content": "late"}]})
    'message 2: a system turn may only come first'
    >>> check_record({"messages": [{"role": "user", "content": "hi"}]})
    'no assistant turn'
    >>> check_record({"messages": [{"content": "hi"}]}), check_record({"messages": []})
    ('message 0: missing role', 'empty "messages" list')
    >>> check_record({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "a"}]})
    'message 0: empty content'
    >>> check_record([1, 2])
    'not an object with a "messages" list'
    """
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        return 'not an object with a "messages" list'
    messages: list[object] = record["messages"]
    if not messages:
        return 'empty "messages" list'
    previous = None
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            return f"message {n}: missing role"
        role = message["role"]
        if role not in ROLES:
            return f"message {n}: unknown role {str(role)[:20]!r} (use system, user or assistant)"
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            return f"message {n}: empty content"
        if role == "system" and n > 0:
            return f"message {n}: a system turn may only come first"
        if role == "assistant" and previous != "user":
            return f"message {n}: an assistant turn must follow a user turn"
        previous = role
    if "assistant" not in (m["role"] for m in messages if isinstance(m, dict)):
        return "no assistant turn"
    return None
