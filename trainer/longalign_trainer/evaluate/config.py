"""The evaluation stage's configuration: one typed model, loaded from YAML or JSON, with field-named errors.

``longalign eval --config FILE`` reads either this model directly or the operator's stage-config envelope
(``operator/longalign_operator/builders.py:stage_config``)::

    {"stage": "evaluation", "run": "r1", "outputDir": "/checkpoints/r1", "resultsDir": "/results/r1",
     "dataDir": "/data/r1", "terminationMessagePath": "/dev/termination-log",
     "evaluation": {"checkpointPath": null, "gpus": 1,
                    "longBenchChat": {"path": "longbench_chat.jsonl", "fewShotPath": "few_shots.json"},
                    "needle": {"contextLengths": [1000, 8000], "depthsPercent": [10, 50, 90]},
                    "judge": {"endpoint": "https://api.openai.com/v1", "model": "gpt-4",
                              "apiKeySecretRef": {"name": "judge", "key": "api-key"}}}}

The judge's API key reaches the pod as ``LONGALIGN_JUDGE_API_KEY`` (from the Secret); the config only names the
variable. The defaults follow the LongAlign paper's evaluation: greedy answers of up to 1024 tokens, a judge at
temperature 0 seeing the short question, the reference answer and 3 scored examples, up to 5 queries per score.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from longalign_trainer.chat_client import EngineConfig
from longalign_trainer.config_files import ConfigError, read_mapping, validate
from longalign_trainer.contract import JUDGE_KEY_ENV

DATA_DIR = Path(__file__).parent / "data"

__all__ = ["ConfigError", "EvalConfig", "load_config", "parse_config", "to_eval"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Model):
    """The checkpoint under evaluation and how it answers."""

    path: Path = Field(
        description="Hugging Face model folder (the training stage's export: OUTPUT_DIR/model); "
        "its tokenizer measures and truncates prompts"
    )
    base_url: str | None = Field(
        None,
        description="an OpenAI-compatible server already serving this checkpoint; "
        "unset: the stage starts vLLM on `path` itself",
    )
    served_name: str = Field("checkpoint", min_length=1)
    max_model_len: int | None = Field(
        None, gt=0, description="the server's context; unset: vLLM's default (the model's), read back from /v1/models"
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs the server spreads the model over")
    startup_timeout_s: float = Field(1800.0, gt=0, description="how long vLLM may take to load the checkpoint")
    extra_args: list[str] = Field(default_factory=list, description="more vLLM server arguments")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy, as the reference evaluation")
    max_tokens: int = Field(1024, gt=0, description="the longest LongBench-Chat answer")


class JudgeConfig(_Model):
    """The grading model, behind any OpenAI-compatible endpoint."""

    base_url: str = Field(min_length=1, description="API root, e.g. https://api.openai.com/v1")
    model: str = Field(min_length=1)
    api_key_env: str = Field(JUDGE_KEY_ENV, description="env var holding the API key (never logged)")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(512, gt=0, description="room for the judge's reasoning and its [[rating]]")
    attempts: int = Field(
        5,
        ge=1,
        le=20,
        description="queries per score until the reply holds a valid rating; "
        "after that the answer is recorded as unscored",
    )
    repeats: int = Field(
        1,
        ge=1,
        le=5,
        description="independent scores per answer (few-shot order reshuffled), averaged; the paper scores twice",
    )
    request_timeout_s: float | None = Field(None, gt=0, description="per request; unset: engine.request_timeout_s")
    constrain: Literal["regex", "none"] = Field(
        "none",
        description="`regex`: vLLM structured outputs force the "
        "reply into the `[[N]]` rating format (vLLM judges only)",
    )


class LongBenchChatConfig(_Model):
    """The benchmark: cases {idx, prompt, query, answer} and 3 scored example answers per case."""

    path: Path = Field(
        description="the cases: the published test_cases.json (a JSON list) or JSONL, one "
        "{idx, prompt, query, answer} per line"
    )
    few_shot_path: Path | None = Field(
        None,
        description="few_shots.json: a JSON list (entry idx - 1 for case "
        "idx) of 3 {answer, score}; unset (our prompt only): no examples",
    )
    judge_prompt: Literal["published", "ours"] = Field(
        "published",
        description=(
            "published: LongBench-Chat's own judge prompt, used exactly as THUDM/LongAlign's LongBench_Chat/eval.py "
            "does (needs judge_prompt_path and few_shot_path), so scores compare with the paper's; ours: this "
            "project's rewording (examples shuffled per run)"
        ),
    )
    judge_prompt_path: Path | None = Field(
        None, description="prompt_fs.txt of THUDM/LongAlign's LongBench_Chat/ (not shipped: bring it)"
    )
    limit: int | None = Field(None, gt=0, description="evaluate only the first N cases (smoke runs)")

    @model_validator(mode="after")
    def _published_needs_its_files(self) -> LongBenchChatConfig:
        if self.judge_prompt == "published":
            missing = [
                name
                for name, value in (
                    ("judge_prompt_path", self.judge_prompt_path),
                    ("few_shot_path", self.few_shot_path),
                )
                if value is None
            ]
            if missing:
                raise ValueError(
                    f"the published judge prompt needs {' and '.join(missing)}: bring prompt_fs.txt "
                    "and few_shots.json from THUDM/LongAlign's LongBench_Chat/ folder, or set "
                    "judge_prompt: ours"
                )
        return self


class NeedleConfig(_Model):
    """Needle in a haystack: a grid of context lengths x insertion depths."""

    context_lengths: list[int] = Field(default_factory=lambda: [1000, 8000, 16000, 32000, 60000], min_length=1)
    depths_percent: list[float] = Field(default_factory=lambda: [10.0, 30.0, 50.0, 70.0, 90.0], min_length=1)
    needle: str = Field("The secret ingredient of the harbour bakery's famous bread is smoked rosemary.", min_length=1)
    question: str = Field("What is the secret ingredient of the harbour bakery's famous bread?", min_length=1)
    key_fact: str = Field(
        "smoked rosemary",
        min_length=1,
        description="graded by exact match (case and punctuation ignored) in the answer",
    )
    haystack_path: Path | None = Field(
        None, description="filler text (UTF-8), repeated as needed; default: the project's own"
    )
    max_tokens: int = Field(64, gt=0, description="the longest answer")
    grade_with_judge: bool = Field(
        False,
        description="also have the judge rate each answer 1-10 against the "
        "needle (the reference's GPT-4 grading); exact match stays the headline",
    )

    @model_validator(mode="after")
    def _check(self) -> NeedleConfig:
        bad = [d for d in self.depths_percent if not 0 <= d <= 100]
        if bad:
            raise ValueError(f"depths_percent must lie in 0..100, got {bad}")
        if any(n <= 0 for n in self.context_lengths):
            raise ValueError("context_lengths must be positive")
        if self.key_fact.lower() not in self.needle.lower():
            raise ValueError("key_fact must occur in needle")
        return self


class EvalConfig(_Model):
    """Everything ``longalign eval`` needs."""

    model: ModelConfig
    judge: JudgeConfig | None = None
    longbench_chat: LongBenchChatConfig | None = None
    needle: NeedleConfig | None = None
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(concurrency=8))
    output_dir: Path = Field(description="results.json, plots and the summary go here")
    termination_message_path: Path | None = Field(
        None,
        description="where the summary goes for Kubernetes; "
        "unset: $LONGALIGN_TERMINATION_MESSAGE_PATH or /dev/termination-log",
    )
    seed: int = Field(0, description="shuffles the judge's examples (a different order per run when varied)")

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.longbench_chat is None and self.needle is None:
            raise ValueError("nothing to evaluate: set longbench_chat, needle or both")
        if self.longbench_chat is not None and self.judge is None:
            raise ValueError("longbench_chat needs a judge")
        if self.needle is not None and self.needle.grade_with_judge and self.judge is None:
            raise ValueError("needle.grade_with_judge needs a judge")
        return self


def is_envelope(raw: dict) -> bool:
    return raw.get("stage") == "evaluation" and isinstance(raw.get("evaluation"), dict)


def to_eval(raw: dict) -> dict:
    """The ``EvalConfig`` mapping for an operator envelope (validated by the caller).

    Relative benchmark paths are on the data volume (``dataDir``); the checkpoint defaults to the training
    stage's export, ``outputDir/model``.

    >>> cfg = to_eval({"stage": "evaluation", "outputDir": "/ck/r1", "resultsDir": "/res/r1", "dataDir": "/data/r1",
    ...     "terminationMessagePath": "/dev/termination-log", "evaluation": {"gpus": 2,
    ...     "longBenchChat": {"path": "lbc.jsonl"}, "judge": {"endpoint": "http://j/v1", "model": "gpt-4",
    ...     "apiKeySecretRef": {"name": "s", "key": "k"}}}})
    >>> cfg["model"], cfg["longbench_chat"]
    ({'path': '/ck/r1/model', 'tensor_parallel_size': 2}, {'path': '/data/r1/lbc.jsonl'})
    >>> cfg["judge"], cfg["output_dir"]
    ({'base_url': 'http://j/v1', 'model': 'gpt-4'}, '/res/r1')
    """
    body = dict(raw["evaluation"])
    data_dir = Path(raw.get("dataDir") or ".")
    out_dir = raw.get("outputDir") or "."
    checkpoint = body.pop("checkpointPath", None)
    if checkpoint and not Path(checkpoint).is_absolute():  # on the checkpoints volume
        checkpoint = str(Path(out_dir).parent / checkpoint)
    cfg: dict = {
        "model": {"path": checkpoint or str(Path(out_dir) / "model"), "tensor_parallel_size": int(body.pop("gpus", 1))},
        "output_dir": raw.get("resultsDir") or str(Path(out_dir) / "eval"),
    }
    if raw.get("terminationMessagePath"):
        cfg["termination_message_path"] = raw["terminationMessagePath"]
    lbc = body.pop("longBenchChat", None)
    if lbc:
        cfg["longbench_chat"] = {"path": str(data_dir / lbc["path"])}
        for spec_name, name in (("fewShotPath", "few_shot_path"), ("promptPath", "judge_prompt_path")):
            if lbc.get(spec_name):
                cfg["longbench_chat"][name] = str(data_dir / lbc[spec_name])
        if lbc.get("judgePrompt"):
            cfg["longbench_chat"]["judge_prompt"] = lbc["judgePrompt"]
    needle = body.pop("needle", None)
    if needle is not None:
        cfg["needle"] = {
            k: needle[c]
            for c, k in (("contextLengths", "context_lengths"), ("depthsPercent", "depths_percent"))
            if c in needle
        }
    judge = body.pop("judge", None)
    if judge:  # besides the spec's fields, the stage's own judge settings (snake_case) pass through
        own = {k: v for k, v in judge.items() if k not in ("endpoint", "model", "apiKeySecretRef")}
        cfg["judge"] = {"base_url": judge.get("endpoint"), "model": judge.get("model"), **own}
    for key, value in body.items():  # the stage's own settings (snake_case), if the operator sends any
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def load_config(path: str | Path) -> EvalConfig:
    """Read a YAML or JSON config file (ours or the operator's envelope); ``ConfigError`` names each bad field."""
    path = Path(path)
    raw = read_mapping(path)
    if is_envelope(raw):
        return parse_config(to_eval(raw), source=f"{path} (the operator's envelope)")
    return parse_config(raw, source=str(path))


def parse_config(raw: Mapping, source: str = "config") -> EvalConfig:
    """Validate a config mapping; ``ConfigError`` lists each problem as ``field.path: message``.

    >>> parse_config({"model": {"path": "m", "max_tokens": 0}, "output_dir": "o", "needle": {"depths_percent": [120]}})
    Traceback (most recent call last):
    ...
    longalign_trainer.config_files.ConfigError: config is invalid:
      model.max_tokens: Input should be greater than 0
      needle: depths_percent must lie in 0..100, got [120.0]
    """
    return validate(EvalConfig, raw, source)
