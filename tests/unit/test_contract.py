"""The stage contract: what stages print and leave behind is what the operator can read back."""

from __future__ import annotations

import io
import json

import pytest

from longalign_trainer.contract import (
    MAX_SUMMARY_BYTES,
    ProgressReporter,
    encode_summary,
    last_progress,
    parse_progress,
    write_summary,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_carry_rate_eta_and_metrics_and_are_throttled():
    out, clock = io.StringIO(), Clock()
    reporter = ProgressReporter("train", total=100, unit="steps", stream=out, bar=None, min_interval_s=5, clock=clock)
    assert reporter.update(0, loss=2.0) is not None  # the first call always reports
    clock.now += 1
    assert reporter.update(10, loss=1.9) is None  # within the interval: silent
    clock.now += 9
    line = reporter.update(50, loss=float("nan"), tokens_per_s=1234.5)
    assert line == {
        "longalign": "progress",
        "stage": "train",
        "done": 50,
        "total": 100,
        "unit": "steps",
        "rate": 5.0,
        "eta_s": 10.0,
        "metrics": {"loss": None, "tokens_per_s": 1234.5},
    }
    clock.now += 0.1
    assert reporter.update(100)["done"] == 100  # the last item is always reported
    lines = [parse_progress(t) for t in out.getvalue().splitlines()]
    assert [x["done"] for x in lines] == [0, 50, 100]


def test_a_resumed_stage_measures_its_rate_from_where_it_resumed():
    out, clock = io.StringIO(), Clock()
    reporter = ProgressReporter("datagen", total=1000, unit="documents", stream=out, bar=None, clock=clock)
    reporter.update(900)
    clock.now += 10
    assert reporter.update(950)["rate"] == 5.0


def test_a_stage_announces_its_setting_before_its_first_item_and_every_line_repeats_it():
    out, clock = io.StringIO(), Clock()
    setting = {"zero_stage": 2, "description": "ZeRO-2, no layer recomputed"}
    reporter = ProgressReporter("train", total=10, unit="steps", stream=out, bar=None, clock=clock, setting=setting)
    first = reporter.announce(4)  # resumed after step 4
    assert (first["done"], first["rate"], first["metrics"], first["setting"]) == (4, None, {}, setting)
    clock.now += 30  # the first step (compilation) does not count in the rate
    assert reporter.update(5)["rate"] is None
    clock.now += 10
    line = reporter.update(10, loss=1.0)
    assert (line["rate"], line["setting"]) == (0.5, setting)
    assert [parse_progress(t)["setting"] for t in out.getvalue().splitlines()] == [setting] * 3


def test_readers_skip_everything_that_is_not_a_progress_line():
    log = "\n".join(
        [
            "loading model...",
            '{"longalign": "progress", "stage": "eval", "done": 1, "total": 3, "unit": "cases", "metrics": {}}',
            '{"level": "info", "msg": "json but not ours"}',
            "{not json",
            '{"longalign": "progress", "stage": "eval", "done": 2, "total": 3, "unit": "cases", "metrics": {}}',
            "Traceback (most recent call last):",
        ]
    )
    assert last_progress(log)["done"] == 2
    assert parse_progress('{"longalign": "summary"}') is None
    assert last_progress("no progress at all") is None


def test_summary_round_trips_through_the_termination_message_file(tmp_path):
    summary = {"stage": "train", "final_loss": 1.25, "tokens": 123456, "checkpoint": "/ckpt/final"}
    path = write_summary(summary, tmp_path / "dev" / "termination-log")
    assert json.loads(path.read_text()) == summary


def test_a_stop_another_rank_stated_since_this_one_started_is_kept_over_its_consequence(tmp_path):
    """Rank 1 finds the volume full and states it; rank 0 then fails in a collective because rank 1 is gone:
    the pod's summary must keep the cause (exit code 4, no retry), not the lead's generic error (a retry)."""
    import os
    import time

    from longalign_trainer.contract import report_stop

    path = tmp_path / "termination-log"
    started = time.time()
    report_stop("train", "checkpoint step-8 did not fit", "volume_full", 4, path)
    consequence = {"stage": "train", "ok": False, "error": "DistBackendError: Connection closed by peer"}
    write_summary(consequence, path, keep_stop_since=started)
    assert json.loads(path.read_text())["status"] == "volume_full"
    os.utime(path, (started - 60, started - 60))  # the same stop left by an earlier run: replaced
    write_summary(consequence, path, keep_stop_since=started)
    assert json.loads(path.read_text()) == consequence
    write_summary({"stage": "train", "ok": True}, path)  # without keep_stop_since, the summary is replaced whole
    assert json.loads(path.read_text()) == {"stage": "train", "ok": True}


def test_an_oversized_summary_keeps_its_scalars_and_names_what_it_left_out():
    summary = {
        "stage": "eval",
        "score": 6.38,
        "per_question": [{"idx": i, "answer": "x" * 40} for i in range(200)],
        "notes": "short",
    }
    text = encode_summary(summary)
    assert len(text.encode()) <= MAX_SUMMARY_BYTES
    decoded = json.loads(text)
    assert decoded == {"stage": "eval", "score": 6.38, "notes": "short", "omitted": ["per_question"]}


def test_a_summary_that_cannot_fit_is_an_error_not_a_silent_truncation():
    with pytest.raises(ValueError, match="exceeds 4096 bytes"):
        encode_summary({f"metric_{i}": 1.0 for i in range(400)})


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rates_start_after_the_first_item_and_floats_carry_no_noise():
    out, clock = io.StringIO(), Clock()
    reporter = ProgressReporter("train", total=10, unit="steps", stream=out, bar=None, min_interval_s=0, clock=clock)
    clock.now += 30  # start-up and the first step (compiling kernels) do not count
    first = reporter.update(1, lr=0.0002500000000000001)
    assert first["rate"] is None and first["eta_s"] is None and first["metrics"] == {"lr": 0.00025}
    clock.now += 2
    assert reporter.update(2)["rate"] == 0.5
    assert '"lr": 0.00025}' in out.getvalue()


def test_on_a_terminal_the_bar_goes_to_stderr_and_never_mixes_with_json(monkeypatch):
    stdout, stderr = Terminal(), Terminal()
    monkeypatch.setattr("sys.stdout", stdout)
    monkeypatch.setattr("sys.stderr", stderr)
    reporter = ProgressReporter("eval", total=2, unit="items", min_interval_s=0)
    reporter.update(1, loss=1.23456789)
    reporter.update(2)
    assert stdout.getvalue() == ""  # one terminal: the bar only
    assert stderr.getvalue().startswith("\reval [") and "loss=1.235" in stderr.getvalue()
    assert stderr.getvalue().endswith("\n") and "{" not in stderr.getvalue()
    piped = io.StringIO()
    monkeypatch.setattr("sys.stdout", piped)  # stdout read by the operator (a pod log), stderr a terminal
    ProgressReporter("eval", total=1, unit="items").update(1)
    assert parse_progress(piped.getvalue().splitlines()[0])["done"] == 1 and "{" not in stderr.getvalue()


def test_bad_input_is_one_line_a_summary_and_exit_2(tmp_path, capsys):
    from longalign_trainer.contract import report_bad_input

    assert report_bad_input("train", "data[0].path: x.jsonl is empty", tmp_path / "t") == 2
    assert capsys.readouterr().err == "train: data[0].path: x.jsonl is empty\n"
    assert json.loads((tmp_path / "t").read_text()) == {
        "stage": "train",
        "ok": False,
        "status": "bad_input",
        "exit_code": 2,
        "error": "data[0].path: x.jsonl is empty",
    }
    (tmp_path / "a-file").write_text("")
    assert report_bad_input("eval", "bad", tmp_path / "a-file" / "t") == 2  # an unwritable path: no traceback
    assert capsys.readouterr().err.splitlines()[1].startswith("eval: summary not written (")
