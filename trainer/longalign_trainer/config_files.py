"""Bad input, told apart from failures; stage config files read and validated against a typed model.

A stage that meets bad input (a missing, empty or unusable file; malformed YAML; an invalid setting) raises
``InputError`` (``ConfigError`` for the config file itself) and exits 2 with one line naming the file or field
and the fix (``contract.report_bad_input``): the operator fails the run at once instead of retrying what cannot
succeed. Every stage reads its config this way (``longalign datagen|train|eval --config FILE``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class InputError(ValueError):
    """Bad input (a missing, empty or unusable file; an invalid config): exit 2, not worth a retry.

    The message is one line naming the file or field and what to do about it.
    """


class ConfigError(InputError):
    """The configuration file is unreadable or invalid; the message names each offending field."""


def read_mapping(path: Path) -> dict[str, Any]:
    """The YAML (or JSON) mapping in a config file; ``ConfigError`` in one line naming the file and the problem.

    >>> import tempfile
    >>> bad = Path(tempfile.mkdtemp()) / "c.yaml"; _ = bad.write_text("a: [1, 2\\nb: 3\\n")
    >>> try:
    ...     read_mapping(bad)
    ... except ConfigError as e:
    ...     print(str(e).replace(str(bad), "c.yaml"))
    c.yaml: not valid YAML at line 2, column 2 (expected ',' or ']', but got ':'); fix the file
    """
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e}); check the path") from None
    try:
        raw = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where} ({problem}); fix the file") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of settings at the top level, got "
            f"{type(raw).__name__}; see the example config that `longalign STAGE --help` names"
        )
    return raw


def validate(model: type[M], raw: Mapping[str, Any], source: str) -> M:
    """``raw`` as a ``model``; ``ConfigError`` lists each problem as ``field.path: message``, sorted.

    >>> from pydantic import Field
    >>> class Limits(BaseModel):
    ...     low: int = Field(ge=0)
    ...     high: int
    >>> validate(Limits, {"low": -1}, "limits.yaml")
    Traceback (most recent call last):
    ...
    longalign_trainer.config_files.ConfigError: limits.yaml is invalid:
      high: Field required
      low: Input should be greater than or equal to 0
    """
    try:
        return model.model_validate(dict(raw))
    except ValidationError as e:
        lines = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(sorted(lines))) from None
