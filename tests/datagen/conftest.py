"""Helpers of the data generation tests: documents and configs.

The session's vLLM server (``vllm_server``, ``tiny_model_dir``) and the ``fault_proxy`` factory live in
``tests/conftest.py``, shared with the evaluation tests.
"""

from __future__ import annotations

import json
from pathlib import Path

from longalign_trainer.tiny_model import local_corpus


def corpus_documents(n: int, chars: int, start: int = 0) -> list[str]:
    """``n`` documents of about ``chars`` characters each, made of stdlib docstrings (paragraphs)."""
    texts = local_corpus()
    docs, cur, i = [], "", start
    while len(docs) < n:
        text = texts[i % len(texts)].strip()
        if len(text) > chars:  # bound each piece: a document stays under about twice ``chars``
            text = text[: text.rfind("\n\n", 0, chars) if "\n\n" in text[:chars] else chars]
        cur += text + "\n\n"
        i += 1
        if len(cur) >= chars:
            docs.append(cur.strip())
            cur = ""
    return docs


def base_config(tmp_path: Path, documents_dir: Path, base_urls: list[str], tiny_model_dir: Path, **overrides) -> dict:
    """A datagen config for the tiny teacher: short outputs, so that tests stay fast on 2 cores."""
    cfg = {
        "documents_dir": str(documents_dir),
        "min_tokens": 200,
        "max_tokens": 1500,
        "teacher": {
            "base_urls": base_urls,
            "model": "tiny",
            "tokenizer": str(tiny_model_dir),
            "question_max_tokens": 1200,
            "answer_max_tokens": 48,
            "temperature": 1.0,
        },
        "question_max_chars": 60,
        "keep_truncated_answers": True,  # a random model rarely ends on its own
        "engine": {
            "concurrency": 4,
            "request_timeout_s": 30,
            "max_retries": 3,
            "backoff_initial_s": 0.1,
            "backoff_max_s": 1.0,
            "max_consecutive_failures": 3,
        },
        "output_dir": str(tmp_path / "out"),
        "shard_max_samples": 2,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg))
    return path
