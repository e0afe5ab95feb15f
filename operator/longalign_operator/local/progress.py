"""A running stage's output: its progress lines drawn as a bar, everything it prints kept in a log file.

On a terminal the bar redraws in place; otherwise (CI, a pipe) each progress line becomes one plain line of text.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from longalign_trainer.contract import format_bar, parse_progress


class StageDisplay:
    """Shows one stage attempt's progress on ``out`` while writing its whole output to ``log_path``."""

    def __init__(self, log_path: Path, out: IO[str] | None = None) -> None:
        self.log_path = log_path
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.last: dict | None = None
        """The newest progress line (what the operator would copy into the status)."""

    def follow(self, lines: Iterable[str]) -> None:
        """Consume a process's output, line by line, until it ends."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log:
            for text in lines:
                log.write(text)
                log.flush()
                if (line := parse_progress(text)) is not None:
                    self.last = line
                    self._show(format_bar(line))
        if self.tty and self.last is not None:
            self.out.write("\n")
            self.out.flush()

    def _show(self, text: str) -> None:
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            self.out.write("\r" + text[:width].ljust(width))
        else:
            self.out.write(text + "\n")
        self.out.flush()
