"""The evaluation stage against the session's real vLLM CPU server (tiny random model) as model and judge.

The judge is the same server with other prompts and decoding: constrained by vLLM's structured outputs to the
``[[N]]`` rating format (scores always parse), or unconstrained with 2 tokens (never a valid rating: retries,
then unscored). ``FaultProxy`` in front of it records what the judge was sent and injects HTTP errors and
timeouts. A checkpoint exported by the trainer's own code is served by the stage's own vLLM.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from evalkit import (
    SAMPLE,
    SAMPLE_SHOTS,
    SECRET,
    STAND_IN_TEMPLATE,
    benchmark_with_long_case,
    eval_config,
    published_judge,
    write,
)

from longalign_trainer.contract import parse_progress
from longalign_trainer.evaluate.config import parse_config
from longalign_trainer.evaluate.run import run

CLI = [sys.executable, "-m", "longalign_trainer.cli", "eval", "--config"]


def run_cli(config: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "LONGALIGN_JUDGE_API_KEY": SECRET},
    )


def test_longbench_chat_and_needle_end_to_end(tmp_path, vllm_server, tiny_model_dir, fault_proxy):
    """A full small run through ``longalign eval``: every answer scored twice and averaged, the long case
    middle-truncated, the judge given the short question (never the document), the key only in its header."""
    judge_proxy = fault_proxy()
    bench, shots = benchmark_with_long_case(tmp_path)
    cfg = eval_config(
        tmp_path,
        tiny_model_dir,
        vllm_server.base_url,
        judge_proxy.base_url,
        judge={"repeats": 2},
        longbench_chat={"path": str(bench), "few_shot_path": str(shots)},
        needle={
            "context_lengths": [500, 2000],
            "depths_percent": [10, 50, 90],
            "max_tokens": 12,
            "grade_with_judge": True,
        },
    )
    done = run_cli(write(tmp_path / "eval.json", cfg))
    assert done.returncode == 0, done.stderr[-3000:]

    summary = json.loads((tmp_path / "termination-log").read_text())
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    lbc = results["longbench_chat"]
    rows = lbc["per_question"]
    assert [r["idx"] for r in rows] == [1, 2, 3, 4]
    assert (lbc["cases"], lbc["scored"], lbc["unscored"], lbc["truncated"]) == (4, 4, 0, 1)
    assert [r["truncated"] for r in rows] == [False, False, False, True]
    assert rows[3]["prompt_tokens"] + 24 <= 4096  # the long case was cut to fit the server's context
    for r in rows:
        assert r["prediction"] is not None and len(r["judge_scores"]) == 2 and r["judge_queries"] == 2
        assert all(1 <= s <= 10 and s == int(s) for s in r["judge_scores"])
        assert r["score"] == sum(r["judge_scores"]) / 2
    mean = sum(r["score"] for r in rows) / 4
    assert summary["longbench_chat_score"] == pytest.approx(mean, abs=1e-3) and 1 <= mean <= 10
    assert summary["status"] == "complete" and summary["longbench_chat"]["truncated"] == 1

    # what the judge saw: temperature 0, the short question, reference, 3 examples; never the document
    sent = judge_proxy.requests
    assert len(sent) == 8 + 12  # 4 cases x 2 repeats, 6 needle cells x 2 repeats
    cases = [json.loads(line) for line in bench.read_text().splitlines()]
    needle_question = results["config"]["needle"]["question"]
    needle_sent = [r for r in sent if f"[Question]\n{needle_question}\n" in r["body"]["messages"][-1]["content"]]
    assert len(needle_sent) == 12
    for req in needle_sent:  # the needle sentence as reference, no examples, never the haystack
        prompt = req["body"]["messages"][-1]["content"]
        assert results["config"]["needle"]["needle"] in prompt and "Wendmere" not in prompt
        assert "Rating: [[" not in prompt
    by_query = {}
    for req in (r for r in sent if r not in needle_sent):
        body = req["body"]
        assert body["temperature"] == 0 and "seed" not in body
        prompt = body["messages"][-1]["content"]
        assert "DOCUMENT START" not in prompt
        case = next(c for c in cases if f"[Question]\n{c['query']}\n" in prompt)
        assert case["answer"] in prompt and prompt.count("Rating: [[") == 3
        by_query.setdefault(case["idx"], []).append(prompt)
        assert req["authorization"] == f"Bearer {SECRET}"
    assert sorted(by_query) == [1, 2, 3, 4] and all(len(p) == 2 for p in by_query.values())
    assert any(p[0] != p[1] for p in by_query.values())  # the examples were reshuffled for the second score

    # needle: every cell asked and graded by exact match (a random model never names the key fact)
    nd = results["needle"]
    assert (nd["cells"], nd["graded"], nd["skipped"], nd["errors"]) == (6, 6, 0, 0)
    assert summary["needle_accuracy"] == 0.0
    assert nd["judge_unscored"] == 0 and all(1 <= c["judge_score"] <= 10 for c in nd["grid"])
    assert summary["needle"]["judge_mean_score"] == pytest.approx(
        sum(c["judge_score"] for c in nd["grid"]) / 6, abs=1e-3
    )
    for c in nd["grid"]:
        assert abs(c["actual_depth_percent"] - c["depth_percent"]) <= 15
        assert c["prompt_tokens"] == c["context_length"]
    png = tmp_path / "out" / "needle_heatmap.png"
    assert summary["plots"] == [str(png)] and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    progress = [p for p in map(parse_progress, done.stdout.splitlines()) if p]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 10 and progress[-1]["stage"] == "eval"
    for text in (
        done.stdout,
        done.stderr,
        (tmp_path / "out" / "results.json").read_text(),
        (tmp_path / "termination-log").read_text(),
    ):
        assert SECRET not in text
    assert len((tmp_path / "termination-log").read_bytes()) <= 4096


def test_the_published_judge_procedure_is_followed_to_the_letter(tmp_path, vllm_server, tiny_model_dir, fault_proxy):
    """With the published procedure (a stand-in prompt_fs.txt), the judge receives exactly eval.py's request:
    its system prompt, the template filled by hand here, temperature 0; the score is the last [[...]]."""
    judge_proxy = fault_proxy()
    cfg = parse_config(
        eval_config(
            tmp_path, tiny_model_dir, vllm_server.base_url, judge_proxy.base_url, longbench_chat=published_judge()
        )
    )
    summary = run(cfg)
    assert summary["status"] == "complete" and summary["longbench_chat"]["scored"] == 3
    rows = {
        r["idx"]: r
        for r in json.loads((tmp_path / "out" / "results.json").read_text())["longbench_chat"]["per_question"]
    }
    cases = {c["idx"]: c for c in map(json.loads, SAMPLE.read_text().splitlines())}
    shots = json.loads(SAMPLE_SHOTS.read_text())
    template = STAND_IN_TEMPLATE.read_text()
    assert len(judge_proxy.requests) == 3
    for req in judge_proxy.requests:
        body = req["body"]
        system, user = body["messages"]
        assert system == {"role": "system", "content": "You're a good assistant at evaluating the quality of texts."}
        idx = next(i for i, c in cases.items() if f"[Question]\n{c['query']}\n" in user["content"])
        pairs = [v for e in shots[idx - 1] for v in (e["answer"], e["score"])]
        prediction = rows[idx]["prediction"].strip().replace("\n", " ").strip()
        assert user == {
            "role": "user",
            "content": template.format(cases[idx]["query"], cases[idx]["answer"], *pairs, prediction),
        }
        assert body["temperature"] == 0
    for r in rows.values():
        assert r["score"] == float(re.findall(r"\[\[([^\]]+)\]\]", r["judge_replies"][-1])[-1])


def test_an_overlong_judge_prompt_is_unscored_with_the_reason_and_the_rest_scored(
    tmp_path, vllm_server, tiny_model_dir, fault_proxy
):
    """A reference answer longer than the judge's context: that case is recorded as unscored (the reason
    says so), every other case is scored and the results are written."""
    cases = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    cases[1]["answer"] = " ".join(["The line opened in 1874 and closed in 1931."] * 700)  # > 4096 tokens
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(c) + "\n" for c in cases))
    judge_proxy = fault_proxy()
    cfg = parse_config(
        eval_config(
            tmp_path,
            tiny_model_dir,
            vllm_server.base_url,
            judge_proxy.base_url,
            longbench_chat={"path": str(bench), **published_judge()},
        )
    )
    summary = run(cfg)
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["longbench_chat"]["per_question"]
    assert [r["score"] is None for r in rows] == [False, True, False]
    assert rows[1]["unscored_reason"].startswith("judge_context_overflow: the judge prompt (")
    assert rows[1]["judge_queries"] == 1  # not asked again: it can never fit
    assert summary["status"] == "complete" and summary["longbench_chat"]["scored"] == 2
    assert summary["longbench_chat_score"] == pytest.approx((rows[0]["score"] + rows[2]["score"]) / 2, abs=1e-3)


def test_an_answer_too_long_for_the_judge_is_cut_in_the_middle_and_scored(
    tmp_path, vllm_server, tiny_model_dir, fault_proxy
):
    """An answer longer than the judge's context: the judge is asked again with the answer's middle cut out
    (head and tail kept) until it fits, and scores it; the result says how much of the answer it saw."""
    import asyncio

    from longalign_trainer.chat_client import ChatClient
    from longalign_trainer.evaluate.judge import Judge
    from longalign_trainer.evaluate.run import Endpoint

    judge_proxy = fault_proxy()
    cfg = parse_config(eval_config(tmp_path, tiny_model_dir, vllm_server.base_url, judge_proxy.base_url))
    j = cfg.judge
    answer = "It opened in 1874. " + " ".join(["The line ran north along the river."] * 1000) + " It closed in 1931."

    async def grade():
        client = ChatClient(Endpoint([j.base_url], j.model, j.api_key_env, j.temperature), cfg.engine)
        try:
            return await Judge(j, client, seed=0).grade(1, "When did it open?", "In 1874.", [], answer)
        finally:
            await client.close()

    verdict = asyncio.run(grade())
    assert verdict.reason is None and verdict.score is not None
    assert verdict.judged_answer_chars is not None and verdict.judged_answer_chars < len(answer) / 2
    first, last = judge_proxy.requests[0]["body"], judge_proxy.requests[-1]["body"]
    assert answer in first["messages"][-1]["content"]  # asked whole first: it overflowed
    judged = last["messages"][-1]["content"]
    assert "It opened in 1874." in judged and "It closed in 1931." in judged and answer not in judged


def test_a_rerun_asks_for_no_answer_or_score_already_obtained(tmp_path, vllm_server, tiny_model_dir, fault_proxy):
    """The judge is down in the first run (incomplete): the answers are kept. The rerun asks the model nothing
    and the judge only for the scores; a third run asks nobody anything and gives the same results."""
    judge_down = {"now": True}
    model_proxy = fault_proxy()
    judge_proxy = fault_proxy(lambda n: 503 if judge_down["now"] else None)
    cfg = parse_config(
        eval_config(
            tmp_path,
            tiny_model_dir,
            model_proxy.base_url,
            judge_proxy.base_url,
            engine={"max_retries": 0},
            needle={"context_lengths": [500], "depths_percent": [10, 90], "max_tokens": 8},
        )
    )
    first = run(cfg)
    assert first["status"] == "incomplete" and len(model_proxy.requests) == 3 + 2
    judge_down["now"] = False
    asked_before = len(judge_proxy.requests)
    second = run(cfg)
    assert second["status"] == "complete" and second["longbench_chat"]["scored"] == 3
    assert len(model_proxy.requests) == 3 + 2  # no answer asked again, no needle cell either
    assert len(judge_proxy.requests) == asked_before + 3 and second["reused"] == 3 + 2
    results = (tmp_path / "out" / "results.json").read_text()
    third = run(cfg)
    assert len(model_proxy.requests) == 3 + 2 and len(judge_proxy.requests) == asked_before + 3
    assert third["reused"] == 3 + 3 + 2 and third["longbench_chat_score"] == second["longbench_chat_score"]
    again = json.loads((tmp_path / "out" / "results.json").read_text())
    assert again["longbench_chat"] == json.loads(results)["longbench_chat"]
    assert again["needle"]["grid"] == json.loads(results)["needle"]["grid"]


def test_a_missing_benchmark_file_or_model_folder_is_bad_input(tmp_path, vllm_server, tiny_model_dir):
    """Exit 2 before any server starts, one line naming the file and the fix, the summary written; no traceback."""
    for broken, expected in (
        ({"longbench_chat": {"path": str(tmp_path / "nowhere.json")}}, "longbench_chat.path: cannot read"),
        ({"model": {"path": str(tmp_path / "no-model")}}, "model.path: "),
    ):
        cfg = eval_config(tmp_path, tiny_model_dir, None, vllm_server.base_url, **broken)
        done = run_cli(write(tmp_path / "eval.json", cfg))
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        [line] = done.stderr.strip().splitlines()
        assert line.startswith(f"eval: {expected}") and ("bring" in line or "point it at" in line), line
        summary = json.loads((tmp_path / "termination-log").read_text())
        assert summary["exit_code"] == 2 and summary["error"] == line.removeprefix("eval: ")
    (tmp_path / "bad.yaml").write_text("model: {path: x\n")
    done = subprocess.run(
        [*CLI, str(tmp_path / "bad.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LONGALIGN_TERMINATION_MESSAGE_PATH": str(tmp_path / "t")},
    )
    assert done.returncode == 2 and done.stderr.strip().endswith("; fix the file") and "Traceback" not in done.stderr
    assert json.loads((tmp_path / "t").read_text())["status"] == "bad_input"


def test_a_judge_without_valid_ratings_leaves_answers_unscored(tmp_path, vllm_server, tiny_model_dir, fault_proxy):
    """Unconstrained and cut at 2 tokens, the judge never writes [[N]]: each answer is asked ``attempts``
    times, then recorded as unscored. No score is made up, and the mean is None, not 0."""
    judge_proxy = fault_proxy()
    cfg = parse_config(
        eval_config(
            tmp_path,
            tiny_model_dir,
            vllm_server.base_url,
            judge_proxy.base_url,
            judge={"constrain": "none", "max_tokens": 2, "attempts": 2},
            longbench_chat={"limit": 2},
        )
    )
    summary = run(cfg)
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["longbench_chat"]["per_question"]
    assert len(rows) == 2 and len(judge_proxy.requests) == 4
    for r in rows:
        assert r["score"] is None and r["unscored_reason"] == "no_valid_score"
        assert r["judge_queries"] == 2 and len(r["judge_replies"]) == 2 and r["prediction"] is not None
    assert summary["longbench_chat_score"] is None
    assert summary["longbench_chat"] == {"cases": 2, "scored": 0, "unscored": 2, "truncated": 0, "judge_unavailable": 0}


@pytest.mark.parametrize(
    "fault,expect",
    [
        (lambda n: 503, "http_503"),
        (lambda n: ("delay", 3.0), "timeouts"),
    ],
)
def test_a_failing_judge_is_retried_then_unscored_and_the_run_incomplete(
    tmp_path, vllm_server, tiny_model_dir, fault_proxy, fault, expect
):
    judge_proxy = fault_proxy(fault)
    cfg = parse_config(
        eval_config(
            tmp_path,
            tiny_model_dir,
            vllm_server.base_url,
            judge_proxy.base_url,
            judge={"request_timeout_s": 1.0},
            longbench_chat={"limit": 2},
            engine={"max_retries": 1},
        )
    )
    t0 = time.monotonic()
    summary = run(cfg)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert summary["status"] == "incomplete" and "rerun" in summary["error"]
    assert summary["longbench_chat_score"] is None and summary["longbench_chat"]["judge_unavailable"] == 2
    for r in results["longbench_chat"]["per_question"]:
        assert r["score"] is None and r["unscored_reason"].startswith("judge_unavailable")
    assert results["requests"]["judge"][expect] == 4  # 2 answers x (1 try + 1 retry)
    assert len(judge_proxy.requests) == 4
    assert time.monotonic() - t0 < 60


def test_a_judge_that_stays_down_is_not_asked_about_every_answer(tmp_path, vllm_server, tiny_model_dir, fault_proxy):
    """After ``engine.max_consecutive_failures`` answers in a row failed to be judged, the rest are recorded as
    unscored (judge unavailable) without more requests to a judge that is down or out of quota."""
    judge_proxy = fault_proxy(lambda n: 503)
    cfg = parse_config(
        eval_config(
            tmp_path,
            tiny_model_dir,
            vllm_server.base_url,
            judge_proxy.base_url,
            engine={"max_retries": 1, "max_consecutive_failures": 1, "concurrency": 1},
        )
    )
    summary = run(cfg)
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["longbench_chat"]["per_question"]
    assert summary["status"] == "incomplete" and summary["longbench_chat"]["judge_unavailable"] == 3
    assert len(judge_proxy.requests) == 2  # the first answer: 1 try + 1 retry; then no more requests
    assert sum("not asked" in r["unscored_reason"] for r in rows) == 2


def test_a_rejected_judge_key_stops_the_run_at_once(tmp_path, vllm_server, tiny_model_dir, fault_proxy):
    """Through the operator's envelope: the key from LONGALIGN_JUDGE_API_KEY reaches the judge (in its header
    only); a 401 is not retried, the run stops as incomplete, and neither output nor summary shows the key."""
    judge_proxy = fault_proxy(lambda n: 401)
    ckpt_root, data = tmp_path / "checkpoints", tmp_path / "data"
    (ckpt_root / "r1").mkdir(parents=True)
    (ckpt_root / "r1" / "model").symlink_to(tiny_model_dir)  # where training exports
    data.mkdir()
    (data / "lbc.jsonl").write_text(SAMPLE.read_text())
    envelope = {
        "stage": "evaluation",
        "run": "r1",
        "attempt": 0,
        "baseModelPath": str(tiny_model_dir),
        "outputDir": str(ckpt_root / "r1"),
        "resultsDir": str(tmp_path / "results"),
        "dataDir": str(data),
        "terminationMessagePath": str(tmp_path / "termination-log"),
        "evaluation": {
            "gpus": 1,
            "longBenchChat": {"path": "lbc.jsonl", "judgePrompt": "ours"},
            "judge": {
                "endpoint": judge_proxy.base_url,
                "model": "tiny",
                "apiKeySecretRef": {"name": "judge", "key": "key"},
            },
            # the stage's own settings pass through: reuse the session's server
            "model": {"base_url": vllm_server.base_url, "served_name": "tiny", "max_tokens": 16},
            "engine": {"max_retries": 2, "backoff_initial_s": 0.05},
        },
    }
    done = run_cli(write(tmp_path / "config.json", envelope))
    assert done.returncode == 1, done.stderr[-2000:]
    summary = json.loads((tmp_path / "termination-log").read_text())
    assert summary["status"] == "incomplete" and "HTTP 401" in summary["error"]
    assert summary["checkpoint"] == str(ckpt_root / "r1" / "model")
    assert 1 <= len(judge_proxy.requests) <= 3  # one per answer in flight at most: a 4xx is never retried
    assert all(r["authorization"] == f"Bearer {SECRET}" for r in judge_proxy.requests)
    assert (tmp_path / "results" / "results.json").is_file()
    assert SECRET not in done.stderr + done.stdout + json.dumps(summary)


def test_a_checkpoint_vllm_cannot_use_fails_early_with_the_reason(tmp_path, vllm_server):
    """No weights: refused before vLLM starts (exit 3, the summary names what is missing)."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    cfg = eval_config(tmp_path, ckpt, None, vllm_server.base_url)
    t0 = time.monotonic()
    done = run_cli(write(tmp_path / "eval.json", cfg))
    assert done.returncode == 3 and "weights" in done.stderr
    summary = json.loads((tmp_path / "termination-log").read_text())
    assert summary["status"] == "failed" and "weights" in summary["error"]
    assert time.monotonic() - t0 < 30


def test_a_checkpoint_exported_by_the_trainer_is_served_and_evaluated(tmp_path, vllm_server, tiny_model_dir):
    """The trainer's own export (a few steps on the tiny model) is started in vLLM by the stage itself, answers,
    is judged by the session's server, and leaves no server process behind."""
    from trainer_export import train_and_export

    export = train_and_export(tiny_model_dir, tmp_path / "train")
    cfg = eval_config(
        tmp_path,
        export,
        None,
        vllm_server.base_url,
        model={"served_name": "trained", "max_model_len": 2048},
        longbench_chat={"limit": 1},
        needle={"context_lengths": [400], "depths_percent": [50], "max_tokens": 8},
    )
    done = run_cli(write(tmp_path / "eval.json", cfg), timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "termination-log").read_text())
    assert summary["status"] == "complete" and summary["server_context"] == 2048
    assert summary["longbench_chat"]["scored"] == 1 and summary["needle"]["graded"] == 1
    log = (tmp_path / "out" / "vllm-server.log").read_text()
    assert str(export) in log
    leftovers = subprocess.run(["pgrep", "-f", str(export)], capture_output=True, text=True).stdout.split()
    assert leftovers == []


def test_a_checkpoint_vllm_loads_but_cannot_run_fails_early_with_vllms_reason(tmp_path, vllm_server):
    """head_dim 16: vLLM's CPU backend starts, then dies on the first request. The stage's smoke request
    finds out before any benchmark work and reports vLLM's root cause (exit 3, not "incomplete: rerun")."""
    from longalign_trainer.tiny_model import build_tiny_model

    ckpt = build_tiny_model(tmp_path / "hd16", hidden_size=64, heads=4, kv_heads=2, intermediate_size=128)
    cfg = eval_config(tmp_path, ckpt, None, vllm_server.base_url, model={"max_model_len": 1024})
    done = run_cli(write(tmp_path / "eval.json", cfg), timeout=400)
    assert done.returncode == 3, done.stderr[-3000:]
    summary = json.loads((tmp_path / "termination-log").read_text())
    assert summary["status"] == "failed"
    assert summary["error"].startswith(
        "vLLM loaded the checkpoint but cannot run it: RuntimeError: Unsupported "
        "CPU attention configuration: head_dim=16"
    ), summary["error"][:500]
    assert not (tmp_path / "out" / "results.json").exists()
    leftovers = subprocess.run(["pgrep", "-f", str(ckpt)], capture_output=True, text=True).stdout.split()
    assert leftovers == []
