"""Loading LongAlign JSONL: loss only on the answers, bad records named by file:line, over-long ones by setting."""

from __future__ import annotations

import json
import threading

import pytest
from trainer_datasets import make_dataset, write_jsonl

from longalign_trainer.config_files import InputError
from longalign_trainer.train.data import MAX_PRINTED, load_examples

GOOD = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is json?"},
        {"role": "assistant", "content": "A format."},
    ]
}


def test_labels_cover_exactly_the_assistant_answer(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "a.jsonl", [GOOD])
    [ex], report = load_examples([(f, None)], tokenizer, 1024, "drop", seed=0)
    assert tokenizer.decode([t for t in ex.labels if t != -100]) == "A format.<|end|>"
    assert len(ex.labels) == len(ex.input_ids) and report.kept == 1 and not report.dropped


def test_every_rejected_line_is_counted_named_printed_and_listed(tmp_path, tokenizer):
    user, answer = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}
    f = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            GOOD,
            "{not json",
            {"messages": [{"content": "no role"}]},
            {"messages": [user, {"role": "assistant", "content": ""}]},
            {"messages": [{"role": "user", "content": "only a question"}]},
            {"text": "wrong shape"},
            "",
            {"messages": [answer, user, answer]},
            {"messages": [user, answer, answer]},
            {"messages": [user, answer, {"role": "system", "content": "late"}, user, answer]},
            {"messages": [{"role": "tool", "content": "x"}, user, answer]},
            {"messages": []},
            GOOD,
        ],
    )
    printed: list[str] = []
    rejected = tmp_path / "out" / "rejected-records.txt"
    examples, report = load_examples(
        [(f, None)], tokenizer, 1024, "drop", seed=0, log=printed.append, rejected_path=rejected
    )
    expected = [
        f"{f}:2: invalid JSON",
        f"{f}:3: message 0: missing role",
        f"{f}:4: message 1: empty content",
        f"{f}:5: no assistant turn",
        f'{f}:6: not an object with a "messages" list',
        f"{f}:7: blank line",
        f"{f}:8: message 0: an assistant turn must follow a user turn",
        f"{f}:9: message 2: an assistant turn must follow a user turn",
        f"{f}:10: message 2: a system turn may only come first",
        f"{f}:11: message 0: unknown role 'tool' (use system, user or assistant)",
        f'{f}:12: empty "messages" list',
    ]
    assert len(examples) == 2 and report.records == 13 and report.kept == 2
    assert report.named == expected and report.rejected == len(expected)
    assert printed == [f"rejected {line}" for line in expected]
    assert rejected.read_text().splitlines() == expected
    json.dumps(report.summary())  # goes into the stage summary


def test_rejected_lines_are_printed_up_to_a_cap_and_all_listed(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "many.jsonl", [GOOD, *["{oops"] * 30])
    printed: list[str] = []
    _, report = load_examples(
        [(f, None)], tokenizer, 1024, "drop", seed=0, log=printed.append, rejected_path=tmp_path / "rejected.txt"
    )
    assert len(printed) == MAX_PRINTED + 1 and "all are listed in rejected-records.txt" in printed[-1]
    assert len((tmp_path / "rejected.txt").read_text().splitlines()) == 30 == report.rejected


def test_a_file_without_a_usable_record_is_bad_input(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "none.jsonl", ["", {"messages": [{"role": "assistant", "content": "a"}]}])
    ok = write_jsonl(tmp_path / "ok.jsonl", [GOOD])
    with pytest.raises(InputError, match=rf"{f}: no usable record among its 2 lines"):
        load_examples([(ok, None), (f, None)], tokenizer, 1024, "drop", seed=0)


@pytest.mark.parametrize("overlong", ["drop", "truncate"])
def test_overlong_sequences_are_dropped_or_truncated_and_counted(tmp_path, tokenizer, overlong):
    long = {
        "messages": [{"role": "user", "content": "short question"}, {"role": "assistant", "content": "word " * 400}]
    }
    f = write_jsonl(tmp_path / "l.jsonl", [GOOD, long])
    examples, report = load_examples([(f, None)], tokenizer, 128, overlong, seed=0)
    if overlong == "drop":
        assert len(examples) == 1 and report.dropped == {"longer than 128 tokens": 1}
    else:
        assert len(examples) == 2 and report.truncated == 1 and max(len(e) for e in examples) == 128


def test_without_ratios_every_record_of_every_file_is_used(tmp_path, tokenizer):
    a = make_dataset(tmp_path / "many.jsonl", 30, seed=1)
    b = write_jsonl(tmp_path / "few.jsonl", [GOOD, GOOD, GOOD, "{bad"])
    examples, report = load_examples([(a, None), (b, None)], tokenizer, 4096, "drop", seed=0)
    assert len(examples) == 33 and report.kept == 33 and report.rejected == 1
    assert report.summary()["per_file"] == {str(a): {"valid": 30, "used": 30}, str(b): {"valid": 3, "used": 3}}


def test_files_are_mixed_by_ratio_without_repeats_and_the_rest_is_explained(tmp_path, tokenizer):
    a = make_dataset(tmp_path / "long.jsonl", 20, seed=1)
    b = make_dataset(tmp_path / "short.jsonl", 100, seed=2)
    examples, report = load_examples([(a, 1.0), (b, 2.0)], tokenizer, 4096, "drop", seed=0)
    per_file = report.summary()["per_file"]
    assert per_file[str(a)] == {"valid": 20, "used": 20}
    assert {k: per_file[str(b)][k] for k in ("valid", "used", "left_out")} == {"valid": 100, "used": 40, "left_out": 60}
    assert f"limited by {a} (20 valid records at ratio 1)" in per_file[str(b)]["why"]
    assert report.rejected == 0 and not report.dropped  # left out by the ratio is not invalid
    assert len({e.source for e in examples}) == 60
    again, _ = load_examples([(a, 1.0), (b, 2.0)], tokenizer, 4096, "drop", seed=0)
    assert [e.source for e in again] == [e.source for e in examples]


def test_ranks_sharing_the_tokenizing_get_what_one_process_gets(tmp_path, tokenizer):
    """Each of 3 ranks tokenizes every 3rd line; after the gather every rank holds the one-process result."""
    a = make_dataset(tmp_path / "long.jsonl", 21, seed=1)
    b = write_jsonl(tmp_path / "bad.jsonl", ["{oops", *[GOOD] * 5, {"messages": []}, "", "[]"])
    files = [(a, 1.0), (b, 1.0)]
    alone, alone_report = load_examples(files, tokenizer, 4096, "drop", seed=3)

    world, slots, barrier = 3, [None] * 3, threading.Barrier(3)
    results = [None] * world

    def rank(r):
        def all_gather(obj):  # what torch.distributed.all_gather_object does across processes
            slots[r] = obj
            barrier.wait()
            return list(slots)

        results[r] = load_examples(
            files, tokenizer, 4096, "drop", seed=3, rank=r, world_size=world, all_gather=all_gather
        )

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for examples, report in results:
        assert [e.source for e in examples] == [e.source for e in alone]
        assert all(
            (x.input_ids == y.input_ids).all() and (x.labels == y.labels).all()
            for x, y in zip(examples, alone, strict=True)
        )
        assert report.summary() == alone_report.summary() and report.named == alone_report.named
