"""Stage config files: read YAML or JSON, validate against a typed model, name every bad field in one error.

Data generation and evaluation read their configs this way (``longalign datagen|eval --config FILE``); a
``ConfigError`` ends a stage with exit code 2 (bad input: do not retry).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """The configuration file is unreadable or invalid; the message names each offending field."""


def read_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML or JSON file (YAML is a superset of JSON); ``ConfigError`` otherwise."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
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
