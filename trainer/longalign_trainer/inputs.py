"""Bad input, told apart from failures: one exception class and the one reader of stage config files.

A stage that meets bad input (a missing, empty or unusable file; malformed YAML; an invalid setting) exits 2
with one line naming the file or field and the fix (``contract.report_bad_input``): the operator fails the
run at once instead of retrying what cannot succeed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class InputError(ValueError):
    """Bad input (a missing, empty or unusable file; an invalid config): exit 2, not worth a retry.

    The message is one line naming the file or field and what to do about it.
    """


def read_mapping(path: Path) -> dict[str, Any]:
    """The YAML (or JSON) mapping in a config file; ``InputError`` in one line naming the file and the problem.

    >>> import tempfile
    >>> bad = Path(tempfile.mkdtemp()) / "c.yaml"; _ = bad.write_text("a: [1, 2\\nb: 3\\n")
    >>> try:
    ...     read_mapping(bad)
    ... except InputError as e:
    ...     print(str(e).replace(str(bad), "c.yaml"))
    c.yaml: not valid YAML at line 2, column 2 (expected ',' or ']', but got ':'); fix the file
    """
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot read the config file ({e.strerror or e}); check the path") from None
    try:
        raw = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"{path}: not valid YAML{where} ({problem}); fix the file") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of settings at the top level, got "
                         f"{type(raw).__name__}; see the example config that `longalign STAGE --help` names")
    return raw
