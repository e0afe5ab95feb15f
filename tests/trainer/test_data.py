"""Loading LongAlign JSONL: loss only on the answers, bad records named by file:line, over-long ones by setting."""

from __future__ import annotations

import json
import threading

import pytest

from trainer_datasets import make_dataset, write_jsonl
from longalign_trainer.train.data import load_examples

GOOD = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is json?"},
                     {"role": "assistant", "content": "A format."}]}


def test_labels_cover_exactly_the_assistant_answer(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "a.jsonl", [GOOD])
    [ex], report = load_examples([(f, 1.0)], tokenizer, 1024, "drop", seed=0)
    assert tokenizer.decode([t for t in ex.labels if t != -100]) == "A format.<|end|>"
    assert len(ex.labels) == len(ex.input_ids) and report.kept == 1 and not report.dropped


def test_bad_records_are_counted_and_named_by_file_and_line(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "bad.jsonl", [
        GOOD, "{not json", {"messages": [{"content": "no role"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
        {"messages": [{"role": "user", "content": "only a question"}]}, {"text": "wrong shape"}, GOOD])
    examples, report = load_examples([(f, 1.0)], tokenizer, 1024, "drop", seed=0)
    assert len(examples) == 2 and report.records == 7
    assert report.named == [f"{f}:2: invalid JSON", f"{f}:3: message 0: missing role",
                            f"{f}:4: message 1: empty content", f"{f}:5: no assistant turn",
                            f'{f}:6: not an object with a "messages" list']
    assert sum(report.dropped.values()) == 5
    json.dumps(report.summary())  # goes into the stage summary


@pytest.mark.parametrize("overlong", ["drop", "truncate"])
def test_overlong_sequences_are_dropped_or_truncated_and_counted(tmp_path, tokenizer, overlong):
    long = {"messages": [{"role": "user", "content": "short question"},
                         {"role": "assistant", "content": "word " * 400}]}
    f = write_jsonl(tmp_path / "l.jsonl", [GOOD, long])
    examples, report = load_examples([(f, 1.0)], tokenizer, 128, overlong, seed=0)
    if overlong == "drop":
        assert len(examples) == 1 and report.dropped == {"longer than 128 tokens": 1}
    else:
        assert len(examples) == 2 and report.truncated == 1 and max(len(e) for e in examples) == 128


def test_files_are_mixed_by_ratio_without_repeats(tmp_path, tokenizer):
    a = make_dataset(tmp_path / "long.jsonl", 20, seed=1)
    b = make_dataset(tmp_path / "short.jsonl", 100, seed=2)
    examples, report = load_examples([(a, 1.0), (b, 2.0)], tokenizer, 4096, "drop", seed=0)
    assert report.per_file == {str(a): 20, str(b): 40}
    assert len({e.source for e in examples}) == 60
    again, _ = load_examples([(a, 1.0), (b, 2.0)], tokenizer, 4096, "drop", seed=0)
    assert [e.source for e in again] == [e.source for e in examples]


def test_ranks_sharing_the_tokenizing_get_what_one_process_gets(tmp_path, tokenizer):
    """Each of 3 ranks tokenizes every 3rd line; after the gather every rank holds the one-process result."""
    a = make_dataset(tmp_path / "long.jsonl", 21, seed=1)
    b = write_jsonl(tmp_path / "bad.jsonl", ["{oops", *[GOOD] * 5, {"messages": []}, "[]"])
    files = [(a, 1.0), (b, 1.0)]
    alone, alone_report = load_examples(files, tokenizer, 4096, "drop", seed=3)

    world, slots, barrier = 3, [None] * 3, threading.Barrier(3)
    results = [None] * world

    def rank(r):
        def all_gather(obj):  # what torch.distributed.all_gather_object does across processes
            slots[r] = obj
            barrier.wait()
            return list(slots)

        results[r] = load_examples(files, tokenizer, 4096, "drop", seed=3, rank=r, world_size=world,
                                   all_gather=all_gather)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for examples, report in results:
        assert [e.source for e in examples] == [e.source for e in alone]
        assert all((x.input_ids == y.input_ids).all() and (x.labels == y.labels).all() for x, y in zip(examples, alone, strict=True))
        assert report.summary() == alone_report.summary() and report.named == alone_report.named
