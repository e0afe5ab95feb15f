"""The operator's stage-config file, read as a ``DatagenConfig``.

The operator renders one envelope per stage attempt (``operator/longalign_operator/builders.py:stage_config``)::

    {"stage": "dataGeneration", "run": "r1", "attempt": 0, "dataDir": "/data/r1", ...,
     "dataGeneration": {"teacher": {"modelPath": "/models/t", "servedName": "teacher", "replicas": 2,
                                    "maxModelLen": 65536},
                        "documentsPath": "/documents", "taskTypes": [...], "samplesPerDocument": 1,
                        "minDocumentTokens": 8192, "maxDocumentTokens": 65536,
                        "shortData": {"path": "/data/sharegpt.jsonl", "ratio": 1.0}}}

and passes the teacher servers' base URL(s) in ``LONGALIGN_TEACHER_URL`` (comma-separated when several).
``to_datagen(envelope, env)`` maps that onto this stage's own settings; anything the spec does not say keeps
its default (the paper's procedure). Keys of the stage's own config (snake_case, e.g. ``engine``) placed in the
``dataGeneration`` section (or, for teacher settings, in its ``teacher`` section) pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

from longalign_trainer.contract import TEACHER_URL_ENV

COMPARISON = "comparison"
CONCURRENCY_PER_REPLICA = 32
# The spec's teacher fields; any other key in the teacher section is the stage's own teacher setting.
SPEC_TEACHER_KEYS = {
    "modelPath",
    "servedName",
    "replicas",
    "gpusPerReplica",
    "nodesPerReplica",
    "maxModelLen",
    "image",
    "extraArgs",
}


def is_envelope(raw: dict) -> bool:
    return raw.get("stage") == "dataGeneration" and isinstance(raw.get("dataGeneration"), dict)


def to_datagen(raw: dict, env: Mapping[str, str]) -> dict:
    """The ``DatagenConfig`` mapping for an operator envelope (validated by the caller).

    >>> cfg = to_datagen({"stage": "dataGeneration", "dataDir": "/data/r1", "dataGeneration": {
    ...     "teacher": {"modelPath": "/models/t", "servedName": "teacher", "replicas": 2},
    ...     "taskTypes": ["general", "comparison"], "samplesPerDocument": 2}},
    ...     {"LONGALIGN_TEACHER_URL": "http://t-0:8000/v1,http://t-1:8000/v1"})
    >>> cfg["teacher"]["base_urls"], cfg["task_types"], cfg["comparison_ratio"], cfg["engine"]["concurrency"]
    (['http://t-0:8000/v1', 'http://t-1:8000/v1'], ['general'], 0.5, 64)
    """
    body = dict(raw["dataGeneration"])
    teacher = body.pop("teacher", None) or {}
    urls = [u.strip() for u in env.get(TEACHER_URL_ENV, "").split(",") if u.strip()]
    cfg: dict = {
        "output_dir": raw.get("dataDir"),
        "teacher": {
            "base_urls": urls,
            "model": teacher.get("servedName", "teacher"),
            "tokenizer": teacher.get("modelPath"),
        },
        "engine": {"concurrency": CONCURRENCY_PER_REPLICA * int(teacher.get("replicas", 1))},
    }
    if teacher.get("maxModelLen"):
        cfg["teacher"]["max_model_len"] = teacher["maxModelLen"]
    cfg["teacher"].update({k: v for k, v in teacher.items() if k not in SPEC_TEACHER_KEYS})
    simple = {
        "documentsPath": "documents_dir",
        "samplesPerDocument": "questions_kept",
        "minDocumentTokens": "min_tokens",
        "maxDocumentTokens": "max_tokens",
        "seed": "seed",
    }
    for key, name in simple.items():
        if key in body:
            cfg[name] = body.pop(key)
    if cfg.get("questions_kept", 1) > 5:
        cfg["questions_asked"] = cfg["questions_kept"]  # ask at least as many as are kept
    if "taskTypes" in body:
        types = body.pop("taskTypes")
        cfg["task_types"] = [t for t in types if t != COMPARISON]
        if COMPARISON in types:  # as many comparison items as items of any other type, at most one per 2 documents
            cfg["comparison_ratio"] = min(0.5, 1 / max(1, len(cfg["task_types"])))
    short = body.pop("shortData", None)
    if short:
        cfg["short_data_path"], cfg["short_ratio"] = short.get("path"), short.get("ratio", 0.0)
    for key, value in body.items():  # the stage's own settings, if the operator sends any
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg
