"""Data generation against the real vLLM CPU server: output, resuming after a kill, faults, long documents."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import base_config, corpus_documents, write_config

from longalign_trainer.contract import parse_progress
from longalign_trainer.datagen.config import parse_config
from longalign_trainer.datagen.generate import PROPOSAL_ATTEMPTS, run_async


def make_documents(root: Path, n_txt: int = 3, start: int = 0) -> dict[str, tuple[str, str]]:
    """Documents of ~300-600 tokens in three formats; returns id → (source, text)."""
    docs = corpus_documents(n_txt + 3, 1200, start=start)
    (root / "books").mkdir(parents=True)
    expected = {}
    for i in range(n_txt):
        (root / "books" / f"b{i}.txt").write_text(docs[i])
        expected[f"books/b{i}.txt"] = ("books", docs[i])
    with open(root / "web.jsonl", "w") as f:
        for j in range(2):
            f.write(json.dumps({"text": docs[n_txt + j], "source": "web"}) + "\n")
            expected[f"web.jsonl:{j}"] = ("web", docs[n_txt + j])
    (root / "papers").mkdir()
    pq.write_table(pa.table({"text": [docs[n_txt + 2]]}), root / "papers" / "p.parquet")
    expected["papers/p.parquet:0"] = ("papers", docs[n_txt + 2])
    return expected


def run_cli(config: Path, summary: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "LONGALIGN_TERMINATION_MESSAGE_PATH": str(summary)}
    return subprocess.Popen(
        [sys.executable, "-m", "longalign_trainer.cli", "datagen", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def manifest_documents(out: Path) -> Counter:
    manifest = json.loads((out / "manifest.json").read_text())
    return Counter(d for s in manifest["shards"] for d in s["documents"])


def test_generates_longalign_samples_with_provenance_progress_summary_and_short_mix(
    tmp_path, vllm_server, tiny_model_dir
):
    expected = make_documents(tmp_path / "docs")
    (tmp_path / "docs" / "books" / "tiny.txt").write_text("Too short to be a long document.")
    short = tmp_path / "short.jsonl"
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} + {i}?"},
                {"role": "assistant", "content": f"It is {2 * i}."},
            ]
        }
        for i in range(8)
    ]
    empty = {"messages": [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": ""}]}
    short.write_text("".join(json.dumps(c) + "\n" for c in [*chats, empty]) + "{not json\n")
    cfg = base_config(
        tmp_path,
        tmp_path / "docs",
        [vllm_server.base_url],
        tiny_model_dir,
        questions_kept=2,
        short_data_path=str(short),
        short_ratio=0.5,
        comparison_ratio=0.17,
    )  # 1 pair
    summary_path = tmp_path / "termination-log"
    proc = run_cli(write_config(tmp_path / "datagen.json", cfg), summary_path)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]

    summary = json.loads(summary_path.read_text())
    assert len(summary_path.read_bytes()) <= 4096
    assert summary["status"] == "complete"
    # one extra item: two books side by side, asked comparison tasks
    pair = [d for d in manifest_documents(tmp_path / "out") if d.startswith("compare:")]
    assert len(pair) == 1
    first, second = pair[0].removeprefix("compare:").split("|")
    assert expected[first][0] == expected[second][0] == "books"
    expected[pair[0]] = ("books", f"Document 1:\n{expected[first][1]}\n\nDocument 2:\n{expected[second][1]}")
    assert (summary["documents_total"], summary["documents_done"]) == (len(expected), len(expected))
    assert summary["documents_skipped"] == {"too_short": 1}
    records = read_jsonl(tmp_path / "out" / "data.jsonl")
    generated = [r for r in records if r["meta"]["source"] != "short"]
    mixed = [r for r in records if r["meta"]["source"] == "short"]
    assert summary["samples"] == summary["long_samples"] == len(generated)
    # random answers may be filtered (counted); most of the 6 documents x 2 kept tasks must make it
    assert len(generated) >= len(expected)
    answer_skips = sum(v for k, v in summary["samples_skipped"].items() if k != "duplicate_task")
    assert len(generated) + answer_skips <= 2 * len(expected)

    assert summary["samples_by_source"] == dict(Counter(r["meta"]["source"] for r in generated))
    assert set(summary["samples_by_source"]) <= {"books", "web", "papers"}
    assert summary["samples_by_task_type"].get("comparison", 0) == per_doc_count(generated, pair[0]) >= 1
    per_doc = Counter(r["meta"]["doc_id"] for r in generated)
    assert set(per_doc) <= set(expected) and max(per_doc.values()) <= 2
    for r in generated:
        meta = r["meta"]
        source, text = expected[meta["doc_id"]]
        user, assistant = r["messages"]
        assert user == {"role": "user", "content": text + "\n\n" + meta["task"]}
        assert assistant["role"] == "assistant" and len(assistant["content"]) >= 20
        assert (meta["source"], meta["teacher_model"]) == (source, "tiny")
        assert (
            meta["task_type"] == "comparison"
            if meta["doc_id"] in pair
            else meta["task_type"] in ("general", "summary", "reasoning", "extraction")
        )
        assert r["length"] > meta["doc_tokens"]
    tasks_of = {}
    for r in generated:
        tasks_of.setdefault(r["meta"]["doc_id"], []).append(r["meta"]["task"])
    assert all(len(set(t)) == len(t) for t in tasks_of.values())  # the kept tasks of a document differ

    # the short mix: round(0.5 x generated) valid chats, the empty answer and the broken line left out
    assert len(mixed) == summary["short_samples"] == round(0.5 * len(generated))
    assert all(r["messages"][-1]["content"] for r in mixed)
    assert summary["short_skipped"] == {"short_invalid_or_empty_turn": 1, "short_bad_json": 1}
    histogram = json.loads((tmp_path / "out" / "histogram.json").read_text())
    assert sum(histogram["all"].values()) == len(records) and histogram["all"] == summary["length_histogram"]
    assert sum(histogram["long"].values()) == len(generated)

    # the training stage's own reader takes every record as a conversation
    from longalign_trainer.train.data import DataReport, read_conversations

    report = DataReport()
    assert len(list(read_conversations(tmp_path / "out" / "data.jsonl", report))) == len(records)
    assert not report.dropped

    lines = [p for p in map(parse_progress, stdout.splitlines()) if p]
    assert lines[-1]["done"] == lines[-1]["total"] == len(expected)
    assert lines[-1]["metrics"]["samples"] == len(generated) and lines[-1]["metrics"]["tokens_per_s"] > 0


def per_doc_count(records: list[dict], doc_id: str) -> int:
    return sum(r["meta"]["doc_id"] == doc_id for r in records)


def test_killed_at_any_moment_and_restarted_it_loses_and_duplicates_nothing(tmp_path, vllm_server, tiny_model_dir):
    expected = make_documents(tmp_path / "docs", n_txt=6, start=40)  # 9 documents
    cfg = base_config(
        tmp_path,
        tmp_path / "docs",
        [vllm_server.base_url],
        tiny_model_dir,
        shard_max_samples=1,
        flush_interval_s=0.001,
        engine={"concurrency": 2},
    )
    config = write_config(tmp_path / "datagen.json", cfg)
    out = tmp_path / "out"
    proc = run_cli(config, tmp_path / "summary-1")
    deadline = time.monotonic() + 180
    while True:  # kill as soon as a few documents are committed, whatever the writer is doing
        assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        try:
            if sum(manifest_documents(out).values()) >= 3:
                break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()

    done_at_kill = manifest_documents(out)
    assert 3 <= len(done_at_kill) < len(expected)
    shards_at_kill = {
        p.name: p.read_bytes()
        for p in (out / "shards").glob("shard-*.jsonl")
        if p.name in {s["file"] for s in json.loads((out / "manifest.json").read_text())["shards"]}
    }

    # the rerun goes to the server directly: endpoints may change between runs
    config = write_config(
        tmp_path / "datagen.json", {**cfg, "teacher": {**cfg["teacher"], "base_urls": [vllm_server.base_url]}}
    )
    proc = run_cli(config, tmp_path / "summary-2")
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads((tmp_path / "summary-2").read_text())
    assert summary["documents_resumed"] == len(done_at_kill)
    assert summary["documents_done"] == len(expected)
    remaining = len(expected) - len(done_at_kill)
    assert summary["requests"] <= remaining * (PROPOSAL_ATTEMPTS + 1) + summary["retries"]  # finished ones not redone
    for name, data in shards_at_kill.items():  # committed work is never rewritten
        assert (out / "shards" / name).read_bytes() == data
    final = manifest_documents(out)
    assert set(final) == set(expected) and set(final.values()) == {1}  # each document committed exactly once
    records = read_jsonl(out / "data.jsonl")
    shard_lines = sum(
        len(read_jsonl(out / "shards" / s["file"])) for s in json.loads((out / "manifest.json").read_text())["shards"]
    )
    assert len(records) == shard_lines == summary["samples"]
    keys = Counter((r["meta"]["doc_id"], r["meta"]["task"]) for r in records)
    assert max(keys.values()) == 1
    assert Counter(r["meta"]["doc_id"] for r in records) == Counter(
        {
            d: n
            for s in json.loads((out / "manifest.json").read_text())["shards"]
            for d, n in s["documents"].items()
            if n
        }
    )


def test_sigterm_commits_finished_documents_at_once_and_the_rerun_completes(
    tmp_path, vllm_server, tiny_model_dir, fault_proxy
):
    expected = make_documents(tmp_path / "docs", n_txt=6, start=20)
    # nothing would be committed before the end without the SIGTERM handler: no size or time trigger
    # Progress lines come at most every 5 s: every request is held 1 s (a document takes two or more), so that
    # the run is still going when the line that says documents are finished arrives.
    slow = fault_proxy(lambda n: ("delay", 1.0))
    settings = {"shard_max_samples": 1000, "flush_interval_s": 3600, "engine": {"concurrency": 1}}
    cfg = base_config(tmp_path, tmp_path / "docs", [slow.base_url], tiny_model_dir, **settings)
    config = write_config(tmp_path / "datagen.json", cfg)
    proc = run_cli(config, tmp_path / "summary-1")
    done = total = 0
    for line in proc.stdout:  # progress lines tell how many documents are finished
        progress = parse_progress(line)
        if progress and progress["done"] >= 2:
            done, total = progress["done"], progress["total"]
            break
    assert 2 <= done < total, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr[-2000:]
    summary = json.loads((tmp_path / "summary-1").read_text())
    assert summary["status"] == "incomplete" and "SIGTERM" in summary["error"]
    committed = manifest_documents(tmp_path / "out")
    assert len(committed) == summary["documents_done"] >= done

    # the rerun goes to the server directly: endpoints may change between runs
    config = write_config(
        tmp_path / "datagen.json", {**cfg, "teacher": {**cfg["teacher"], "base_urls": [vllm_server.base_url]}}
    )
    proc = run_cli(config, tmp_path / "summary-2")
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-2000:]
    assert json.loads((tmp_path / "summary-2").read_text())["documents_resumed"] == len(committed)
    final = manifest_documents(tmp_path / "out")
    assert set(final) == set(expected) and set(final.values()) == {1}


def test_retries_rate_limits_server_errors_and_timeouts(tmp_path, vllm_server, tiny_model_dir, fault_proxy):
    # The timeout leaves ordinary requests (a few seconds on 2 loaded cores) far from it; only the delay hits it.
    faults = {0: 429, 1: 503, 2: 500, 3: ("delay", 20.0)}
    proxy = fault_proxy(lambda n: faults.get(n))
    expected = make_documents(tmp_path / "docs", n_txt=1)
    cfg = parse_config(
        base_config(
            tmp_path,
            tmp_path / "docs",
            [proxy.base_url],
            tiny_model_dir,
            engine={"concurrency": 1, "request_timeout_s": 15.0, "max_retries": 5},
        )
    )
    summary = asyncio.run(run_async(cfg, summary_path=tmp_path / "summary"))
    assert summary["status"] == "complete", summary
    assert summary["documents_done"] == len(expected) and summary["samples"] >= 1
    assert summary["request_errors"] == {"http_429": 1, "http_503": 1, "http_500": 1, "timeouts": 1}
    assert summary["retries"] == 4
    assert summary["requests"] == proxy.completions


def test_server_dying_mid_run_stops_resumably_and_a_second_endpoint_takes_over(
    tmp_path, vllm_server, tiny_model_dir, fault_proxy
):
    def fault(n):
        if n >= 5:  # from the sixth request on, the server is gone
            threading.Thread(target=proxy.stop, daemon=True).start()
            return "drop"
        return None

    proxy = fault_proxy(fault)
    expected = make_documents(tmp_path / "docs", n_txt=4, start=80)  # 7 documents
    raw = base_config(
        tmp_path,
        tmp_path / "docs",
        [proxy.base_url],
        tiny_model_dir,
        engine={"concurrency": 1, "max_retries": 1, "max_consecutive_failures": 2},
    )
    first = asyncio.run(run_async(parse_config(raw), summary_path=tmp_path / "summary-1"))
    assert first["status"] == "incomplete"
    assert first["documents_failed"] == 2 and "in a row failed" in first["error"]
    done_first = manifest_documents(tmp_path / "out")
    assert 1 <= len(done_first) <= 3 and first["documents_done"] == len(done_first)
    assert not (tmp_path / "out" / "data.jsonl").exists()  # no final file from an incomplete run

    # the dead endpoint stays in the list: its documents move to the live one
    raw["teacher"]["base_urls"] = [proxy.base_url, vllm_server.base_url]
    second = asyncio.run(run_async(parse_config(raw), summary_path=tmp_path / "summary-2"))
    assert second["status"] == "complete", second
    assert second["documents_resumed"] == len(done_first)
    assert second["request_errors"]["connection_errors"] >= 1
    final = manifest_documents(tmp_path / "out")
    assert set(final) == set(expected) and set(final.values()) == {1}


def test_documents_too_long_for_the_server_are_skipped_and_counted_not_retried(tmp_path, vllm_server, tiny_model_dir):
    make_documents(tmp_path / "docs", n_txt=1)
    (tmp_path / "docs" / "books" / "huge.txt").write_text(corpus_documents(1, 20000, start=120)[0])  # > 4096 tokens
    raw = base_config(tmp_path, tmp_path / "docs", [vllm_server.base_url], tiny_model_dir, max_tokens=20000)
    summary = asyncio.run(run_async(parse_config(raw), summary_path=tmp_path / "s1"))
    assert summary["status"] == "complete"
    assert summary["samples_skipped"].get("exceeds_server_context") == 1  # known from /v1/models: not even sent
    assert "huge" not in json.dumps([r["meta"]["doc_id"] for r in read_jsonl(tmp_path / "out" / "data.jsonl")])
    assert summary["documents_done"] == 5 and summary["samples"] >= 3

    # told a larger context than the server has, the server refuses the request: counted once, never retried
    raw.update(output_dir=str(tmp_path / "out2"), teacher={**raw["teacher"], "max_model_len": 100000})
    summary = asyncio.run(run_async(parse_config(raw), summary_path=tmp_path / "s2"))
    assert summary["status"] == "complete"
    assert summary["samples_skipped"].get("exceeds_server_context") == 1
    assert summary["request_errors"] == {"context_overflows": 1}
    assert summary["retries"] == 0


def test_unknown_model_name_stops_the_run_at_once_with_the_served_names(tmp_path, vllm_server, tiny_model_dir):
    make_documents(tmp_path / "docs", n_txt=1)
    raw = base_config(tmp_path, tmp_path / "docs", [vllm_server.base_url], tiny_model_dir)
    raw["teacher"]["model"] = "no-such-model"
    summary = asyncio.run(run_async(parse_config(raw), summary_path=tmp_path / "s"))
    assert summary["status"] == "incomplete"
    assert "does not serve 'no-such-model'" in summary["error"] and "tiny" in summary["error"]
    assert summary["requests"] == 0 and summary["documents_done"] == 0


def test_openai_response_format_constrains_proposals_as_well(tmp_path, vllm_server, tiny_model_dir):
    # the OpenAI API's json_schema response_format, for teachers that are not vLLM; a random model
    # writes parseable tasks only when the server enforces the schema
    expected = make_documents(tmp_path / "docs", n_txt=1, start=100)
    raw = base_config(
        tmp_path, tmp_path / "docs", [vllm_server.base_url], tiny_model_dir, teacher={"json_output": "response_format"}
    )
    summary = asyncio.run(run_async(parse_config(raw), summary_path=tmp_path / "s"))
    assert summary["status"] == "complete" and summary["documents_done"] == len(expected)
    assert summary["samples"] >= len(expected) - 1
