"""``longalign <stage> --help``: plain text, the README's commands, a shipped example config, the exit codes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stage", ["datagen", "train", "eval"])
def test_stage_help_is_plain_text_with_the_readmes_commands_an_example_and_the_exit_codes(stage):
    done = subprocess.run(
        [sys.executable, "-m", "longalign_operator.cli", stage, "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "``" not in text and "::" not in text  # no reST markup
    commands = [
        line.split("#")[0].strip() for line in text.splitlines() if line.startswith(("  longalign ", "  torchrun "))
    ]
    readme = REPO.joinpath("README.md").read_text()
    assert commands and all(c in readme for c in commands), commands
    examples = re.findall(r"Example configs?: (trainer/\S+?)[ (]", text)
    assert examples and (REPO / examples[0]).exists(), examples
    codes = text[text.index("Exit codes:") :]
    assert all(f"{n} " in codes for n in (0, 1, 2)) and "bad input" in codes and "3 " in codes
