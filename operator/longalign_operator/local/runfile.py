"""The RUN.yaml file: a LongAlignRun resource, read with the operator's spec model.

Everything that can be wrong with the file is reported as one ``RunFileError`` whose message names the file and
the field, never as a traceback: a missing or unreadable file, YAML that does not parse, something that is not a
LongAlignRun, or a spec the operator's model refuses (the same rules as the CRD at ``kubectl apply``).

Settings that only make sense on one machine ride in one annotation, which the operator ignores::

    metadata:
      annotations:
        longalign.dev/local-run: |
          judgeModelPath: /models/tiny-llama   # serve the judge with a local vLLM instead of judge.endpoint
          judgeExtraArgs: [--enforce-eager]    # more arguments of that server

(The stage commands' own settings are the spec's, ``spec.<stage>.settings``, the same in a cluster.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from longalign_operator.builders import Run
from longalign_operator.spec import GROUP, KIND, VERSION, Model, SpecError, parse

LOCAL_ANNOTATION = f"{GROUP}/local-run"


class RunFileError(ValueError):
    """The run file cannot be run; the message says which file and field, and what is wrong."""


class LocalOptions(Model):
    """What ``longalign run`` reads from the ``longalign.dev/local-run`` annotation."""

    judge_model_path: str | None = None
    """Serve the judge from this model folder (a spec path, e.g. /models/x) with a local vLLM server, instead
    of calling ``evaluation.judge.endpoint``; no API key is needed then."""
    judge_extra_args: list[str] = Field(default_factory=list)
    """More arguments of that local judge's vLLM server, e.g. ``["--enforce-eager"]``."""

    @model_validator(mode="before")
    @classmethod
    def _moved_settings(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "stageSettings" in raw:
            raise ValueError(
                "stageSettings: moved into the spec, as spec.<stage>.settings (e.g. spec.training.settings), "
                "so that a cluster runs the stages with the same settings"
            )
        return raw


@dataclass(frozen=True)
class RunFile:
    """A validated run file."""

    run: Run
    options: LocalOptions


def load(path: Path) -> RunFile:
    """Read and validate a run file; ``RunFileError`` on any problem."""
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RunFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RunFileError(f"{path}: cannot read it: {e}") from None
    except yaml.YAMLError as e:
        raise RunFileError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    return from_document(doc, str(path))


def from_document(doc: Any, source: str) -> RunFile:
    """Validate a parsed run file (``source`` names it in messages)."""
    if not isinstance(doc, dict):
        raise RunFileError(f"{source}: expected a {KIND} resource (a mapping), got {type(doc).__name__}")
    if doc.get("kind") != KIND or doc.get("apiVersion") != f"{GROUP}/{VERSION}":
        raise RunFileError(
            f"{source}: apiVersion/kind: expected {GROUP}/{VERSION} {KIND}, "
            f"got {doc.get('apiVersion')} {doc.get('kind')}"
        )
    metadata = doc.get("metadata")
    meta: dict[str, Any] = metadata if isinstance(metadata, dict) else {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise RunFileError(f"{source}: metadata.name: required (it names the run's folders)")
    if not isinstance(doc.get("spec"), dict):
        raise RunFileError(f"{source}: spec: required, a mapping")
    try:
        spec = parse(doc["spec"])
    except SpecError as e:
        raise RunFileError(f"{source}: invalid spec:\n" + "\n".join(f"  {p}: {m}" for p, m in e.problems)) from None
    annotations = meta.get("annotations") or {}
    run = Run(
        name=name,
        namespace=meta.get("namespace") or "default",
        uid="local",
        labels=dict(meta.get("labels") or {}),
        spec=spec,
    )
    return RunFile(run, _local_options(annotations.get(LOCAL_ANNOTATION), source))


def _local_options(text: str | None, source: str) -> LocalOptions:
    where = f"{source}: metadata.annotations[{LOCAL_ANNOTATION}]"
    try:
        raw = yaml.safe_load(text) if text else {}
    except yaml.YAMLError as e:
        raise RunFileError(f"{where}: not valid YAML: {_yaml_problem(e)}") from None
    try:
        return LocalOptions.model_validate(raw or {})
    except ValidationError as e:
        problems = "\n".join(f"  {'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}" for err in e.errors())
        raise RunFileError(f"{where} is invalid:\n{problems}") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: where and what."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else " ".join(problem.split())
