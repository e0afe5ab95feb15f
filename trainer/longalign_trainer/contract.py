"""The one contract between the operator and the stages: progress lines out, a summary at the end.

A stage (``longalign datagen|train|eval --config FILE``) reports by writing:

* **progress lines** on stdout, one JSON object per line, recognisable by ``"longalign": "progress"``::

      {"longalign": "progress", "stage": "train", "done": 40, "total": 200, "unit": "steps",
       "rate": 1.9, "eta_s": 84.2, "metrics": {"loss": 1.83, "tokens_per_s": 35100.0}}

  A line may also carry ``"setting"``: what the stage runs with, as it chose at start (training: its ZeRO
  stage, checkpointing and memory estimate, with a ``"description"`` for people); the operator shows it in
  the stage's status. Other output may be interleaved freely; readers skip every line that is not such an
  object.
* **a summary** (JSON, at most 4 KiB) at the container's termination-message path, where Kubernetes
  copies it into the pod status: the operator reads results without any extra permission, and stages need
  no Kubernetes API rights.

Stdlib only: the operator imports this module too.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

MARKER = "longalign"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_PATH_ENV = "LONGALIGN_TERMINATION_MESSAGE_PATH"
TEACHER_URL_ENV = "LONGALIGN_TEACHER_URL"
"""The teacher servers' base URLs (comma-separated) that the operator gives the data generation pod."""
JUDGE_KEY_ENV = "LONGALIGN_JUDGE_API_KEY"
"""The judge's API key, which the operator gives the evaluation pod from the run's Secret."""
TEACHER_KEY_ENV = "OPENAI_API_KEY"
"""The teacher's API key, which data generation reads when its teacher needs one (vLLM needs none)."""
OPERATOR_ENV = (TERMINATION_MESSAGE_PATH_ENV, TEACHER_URL_ENV, JUDGE_KEY_ENV)
"""Variables the operator sets on stage pods itself: a stage pod's own ``env`` may not name them."""
SECRET_ENV = (JUDGE_KEY_ENV, TEACHER_KEY_ENV)
"""Variables holding secrets: they may come from a Secret (``valueFrom``), never as a ``value`` in a spec."""
MAX_SUMMARY_BYTES = 4096  # Kubernetes truncates termination messages beyond 4096 bytes


EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANNOT_SERVE, EXIT_VOLUME_FULL = 0, 1, 2, 3, 4
"""Exit codes of every stage: 0 done; 1 failed or incomplete (the operator retries); 2 bad input (a missing,
empty or invalid file or setting: retrying cannot help, the run fails at once); 3 the checkpoint cannot be
served (evaluation); 4 a checkpoint or the export did not fit on its volume (training: the run fails at once,
a rerun once there is room resumes). Training also exits 143 when SIGTERM stopped it after a checkpoint
(resumable)."""


class ProgressReporter:
    """Emits a stage's progress lines; draws a human progress bar on stderr when it is a terminal.

    ``update(done, **metrics)`` prints a line at most every ``min_interval_s`` seconds (and always for the
    last item). Rates are measured from the first update (the first item done), so start-up and a first
    step that compiles kernels do not count: the first line has no rate and no ETA.

    The streams never mix: JSON lines go to ``stream`` (stdout, for the operator) unless a person watches
    both stdout and the bar on one terminal, in which case only the bar is drawn.

    ``setting`` (see the module's docstring) goes into every line, so that the newest line alone tells it.
    """

    def __init__(
        self,
        stage: str,
        total: int,
        unit: str,
        *,
        stream: IO[str] | None = None,
        bar: IO[str] | None = None,
        min_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        setting: dict[str, Any] | None = None,
    ) -> None:
        self.stage, self.total, self.unit, self.setting = stage, total, unit, setting
        self.bar = bar if bar is not None else (sys.stderr if _isatty(sys.stderr) else None)
        if stream is None:
            stream = sys.stdout
            if self.bar is not None and _isatty(stream):
                stream = None  # one terminal: the bar is the human form of the same lines
        self.stream = stream
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.start: float | None = None
        self.start_done: int | None = None
        self.last_emit = -math.inf

    def announce(self, done: int) -> dict[str, Any]:
        """Report where the stage starts (``done`` items already finished, e.g. on resuming), before its first
        item: a line without rate or metrics, so the setting is known before the first item ends. Rates still
        count from the first ``update``."""
        return self._emit(done, None, {})

    def update(self, done: int, **metrics: float | None) -> dict[str, Any] | None:
        """Report that ``done`` of ``total`` items are finished; returns the line emitted, if any."""
        now = self.clock()
        if self.start is None or self.start_done is None:  # a resumed stage counts from where it resumed
            self.start, self.start_done = now, done
        if now - self.last_emit < self.min_interval_s and done < self.total:
            return None
        self.last_emit = now
        elapsed = now - self.start
        rate = (done - self.start_done) / elapsed if elapsed > 0 and done > self.start_done else None
        return self._emit(done, rate, metrics)

    def _emit(self, done: int, rate: float | None, metrics: dict[str, float | None]) -> dict[str, Any]:
        eta = (self.total - done) / rate if rate else None
        line = {
            MARKER: "progress",
            "stage": self.stage,
            "done": done,
            "total": self.total,
            "unit": self.unit,
            "rate": None if rate is None else round(rate, 4),
            "eta_s": None if eta is None else round(eta, 1),
            "metrics": {k: _finite(v) for k, v in metrics.items()},
            **({"setting": self.setting} if self.setting is not None else {}),
        }
        if self.stream is not None:
            print(json.dumps(line), file=self.stream, flush=True)
        if self.bar is not None:
            self.bar.write("\r" + format_bar(line) + "\x1b[K" + ("\n" if done >= self.total else ""))
            self.bar.flush()
        return line


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def human(value: float | None, digits: int = 4) -> str:
    """A number rounded for people: ``digits`` significant digits, no exponent for everyday sizes.

    >>> human(0.0002500000000000001), human(35123.456), human(1.83333333), human(None), human(12.0)
    ('0.00025', '35123', '1.833', '-', '12')
    """
    if value is None:
        return "-"
    if abs(value) >= 10**digits:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def format_bar(line: dict[str, Any], width: int = 30) -> str:
    """A one-line human rendering of a progress line.

    >>> format_bar({"stage": "train", "done": 5, "total": 20, "unit": "steps", "rate": 0.5, "eta_s": 30.0,
    ...             "metrics": {"loss": 1.5, "lr": 0.0002500000000000001}}, width=10)
    'train [##--------] 5/20 steps  0.5 steps/s  eta 30s  loss=1.5  lr=0.00025'
    """
    total = max(line["total"], 1)
    filled = int(width * min(line["done"], total) / total)
    rate = "" if line.get("rate") is None else f"  {human(line['rate'], 3)} {line['unit']}/s"
    eta = "" if line.get("eta_s") is None else f"  eta {line['eta_s']:.0f}s"
    metrics = "".join(f"  {k}={human(v)}" for k, v in line.get("metrics", {}).items() if v is not None)
    return (
        f"{line['stage']} [{'#' * filled}{'-' * (width - filled)}] {line['done']}/{line['total']} {line['unit']}"
        f"{rate}{eta}{metrics}"
    )


def parse_progress(text: str) -> dict[str, Any] | None:
    """The progress line in ``text`` (one log line), or None when the line is anything else."""
    text = text.strip()
    if not text.startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and obj.get(MARKER) == "progress" else None


def last_progress(log: str) -> dict[str, Any] | None:
    """The newest progress line in a log, or None when it has none."""
    for text in reversed(log.splitlines()):
        if (line := parse_progress(text)) is not None:
            return line
    return None


def termination_message_path() -> Path:
    """Where this container's summary goes (``$LONGALIGN_TERMINATION_MESSAGE_PATH`` or Kubernetes' default)."""
    return Path(os.environ.get(TERMINATION_MESSAGE_PATH_ENV, DEFAULT_TERMINATION_MESSAGE_PATH))


def encode_summary(summary: dict[str, Any]) -> str:
    """The summary as compact JSON of at most 4 KiB.

    Fields are kept whole: when the whole does not fit, the largest non-scalar fields are left out, one by
    one, and named under ``"omitted"`` (the stage keeps its full results in its output folder).
    """
    kept = {k: _finite(v) for k, v in summary.items()}
    omitted: list[str] = []
    while True:
        text = json.dumps({**kept, **({"omitted": omitted} if omitted else {})}, separators=(",", ":"))
        if len(text.encode()) <= MAX_SUMMARY_BYTES:
            return text
        nested = [k for k, v in kept.items() if isinstance(v, (dict, list, str))]
        if not nested:
            raise ValueError(f"summary has {len(kept)} scalar fields and still exceeds {MAX_SUMMARY_BYTES} bytes")
        largest = max(nested, key=lambda k: len(json.dumps(kept[k])))
        omitted.append(largest)
        del kept[largest]


def write_summary(summary: dict[str, Any], path: Path | None = None, keep_stop_since: float | None = None) -> Path:
    """Write the stage's final summary where Kubernetes reads the termination message; return the path.
    Processes of one pod that report at once (ranks whose writes failed alike) replace it whole, one at a time.

    With ``keep_stop_since`` (a ``time.time()``), a summary stating a stop (``status``: bad input, a full
    volume) that was written at or after that time is kept: another process of the pod stated the cause, and
    what this one reports (a peer gone from a collective) follows from it."""
    import fcntl

    path = path or termination_message_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:  # truncated under the lock, not by opening
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        if keep_stop_since is not None and os.fstat(f.fileno()).st_mtime >= keep_stop_since:
            try:
                earlier = json.loads(f.read() or "null")
            except ValueError:
                earlier = None
            if isinstance(earlier, dict) and "status" in earlier:
                return path
        f.seek(0)
        f.truncate()
        f.write(encode_summary(summary))
    return path


def report_bad_input(stage: str, error: str, path: Path | None = None) -> int:
    """Bad input: print one line naming it (no traceback), write the summary, return ``EXIT_BAD_INPUT``."""
    return report_stop(stage, error, "bad_input", EXIT_BAD_INPUT, path)


def report_stop(stage: str, error: str, status: str, code: int, path: Path | None = None) -> int:
    """A stop no retry can fix: print one line saying why (no traceback), write the summary stating ``status``
    and the exit ``code`` (which torchrun does not pass on), return ``code``."""
    print(f"{stage}: {error}", file=sys.stderr, flush=True)
    try:
        write_summary({"stage": stage, "ok": False, "status": status, "exit_code": code, "error": error[:2000]}, path)
    except OSError as e:  # outside a pod the default path may not be writable: the line above says it all
        print(f"{stage}: summary not written ({e}); set {TERMINATION_MESSAGE_PATH_ENV}", file=sys.stderr)
    return code


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity (such floats become None), and no float noise (0.0002500000000000001 is
    0.00025: 12 significant digits are kept).

    >>> _finite(0.0002500000000000001), _finite(float("nan")), _finite(35123.456789), _finite(3)
    (0.00025, None, 35123.456789, 3)
    """
    if isinstance(value, float):
        return float(f"{value:.12g}") if math.isfinite(value) else None
    return value
