"""Evaluation pieces that need no server: config, judge prompt and parsing, truncation, needle placement."""

from __future__ import annotations

import json
import re

import pytest
from evalkit import SAMPLE, SAMPLE_SHOTS, write
from transformers import AutoTokenizer

from longalign_trainer.chat_tokens import prompt_tokens
from longalign_trainer.evaluate import judge, longbench, needle
from longalign_trainer.evaluate.config import ConfigError, NeedleConfig, load_config
from longalign_trainer.tiny_model import build_tokenizer, local_corpus


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_operator_envelope_becomes_an_eval_config(tmp_path):
    """The file the operator renders for the eval pod loads as is; the judge key is only named, never carried."""
    envelope = {"stage": "evaluation", "run": "r1", "attempt": 0, "baseModelPath": "/models/base",
                "outputDir": "/checkpoints/r1", "resultsDir": "/results/r1", "dataDir": "/data/r1",
                "terminationMessagePath": "/dev/termination-log",
                "evaluation": {"gpus": 4, "longBenchChat": {"path": "lbc/test.jsonl", "fewShotPath": "/abs/shots.json"},
                               "needle": {"contextLengths": [1000, 8000], "depthsPercent": [10, 90]},
                               "judge": {"endpoint": "https://judge.example/v1", "model": "gpt-4",
                                         "apiKeySecretRef": {"name": "judge", "key": "api-key"}}}}
    cfg = load_config(write(tmp_path / "config.json", envelope))
    assert str(cfg.model.path) == "/checkpoints/r1/model"  # the training stage's export
    assert cfg.model.tensor_parallel_size == 4 and cfg.model.base_url is None
    assert str(cfg.longbench_chat.path) == "/data/r1/lbc/test.jsonl"
    assert str(cfg.longbench_chat.few_shot_path) == "/abs/shots.json"
    assert cfg.needle.context_lengths == [1000, 8000] and cfg.needle.depths_percent == [10, 90]
    assert (cfg.judge.base_url, cfg.judge.model, cfg.judge.api_key_env) == ("https://judge.example/v1", "gpt-4",
                                                                            "LONGALIGN_JUDGE_API_KEY")
    assert (cfg.judge.temperature, cfg.judge.attempts) == (0.0, 5)  # the paper's judge setup
    assert str(cfg.output_dir) == "/results/r1" and str(cfg.termination_message_path) == "/dev/termination-log"
    envelope["evaluation"]["checkpointPath"] = "other-run/model"
    assert str(load_config(write(tmp_path / "c2.json", envelope)).model.path) == "/checkpoints/other-run/model"


def test_config_errors_name_the_field(tmp_path):
    bad = {"model": {"path": "m", "temperature": -1}, "output_dir": "o",
           "judge": {"base_url": "http://j/v1", "model": "j", "repeats": 0},
           "needle": {"context_lengths": [1000], "key_fact": "absent words"}}
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path / "bad.json", bad))
    text = str(e.value)
    assert "model.temperature" in text and "judge.repeats" in text and "needle: key_fact must occur in needle" in text
    with pytest.raises(ConfigError, match="longbench_chat needs a judge"):
        load_config(write(tmp_path / "nojudge.json", {"model": {"path": "m"}, "output_dir": "o",
                                                      "longbench_chat": {"path": "b"}}))
    with pytest.raises(ConfigError, match="needle.grade_with_judge needs a judge"):
        load_config(write(tmp_path / "nojudge2.json", {"model": {"path": "m"}, "output_dir": "o",
                                                       "needle": {"grade_with_judge": True}}))


def test_judge_prompt_holds_question_reference_and_examples_never_the_document():
    case = longbench.load_benchmark(SAMPLE, SAMPLE_SHOTS)[0]
    examples = judge.shuffled(case.examples, seed=0, case=case.idx, repeat=0)
    prompt = judge.build_prompt(case.query, case.answer, examples, "An answer to rate.")
    assert case.query in prompt and case.answer in prompt
    assert all(e["answer"] in prompt and f"Rating: [[{e['score']}]]" in prompt for e in case.examples)
    document = case.prompt.removesuffix(case.query).strip()
    assert document[:80] not in prompt  # the judge never sees the long document
    assert prompt.rstrip().endswith("Rating:") and prompt.count("[Answer]") == 4
    # the rating format the prompt asks for is the one the parser and the vLLM constraint use
    assert judge.parse_score("[[6]]") == 6 and re.fullmatch(judge.SCORE_REGEX, "[[10]]")


def test_examples_are_shuffled_per_run_and_per_repeat():
    examples = [{"answer": f"a{i}", "score": i} for i in range(1, 4)]
    orders = {tuple(e["score"] for e in judge.shuffled(examples, seed, 1, repeat))
              for seed in range(6) for repeat in range(2)}
    assert len(orders) >= 3  # not the reference code's fixed order
    assert judge.shuffled(examples, 5, 1, 0) == judge.shuffled(examples, 5, 1, 0)  # reproducible within a run


@pytest.mark.parametrize("reply,score", [
    ("The answer gets the year wrong but the place right. Rating: [[4]]", 4.0),
    ("Compared with examples rated [[10]] and [[1]], this deserves [[7]].", 7.0),
    ("[[ 9 ]]", 9.0), ("Rating: 8/10", 8.0), ("[[12]]", None), ("[[0]]", None), ("[[good]]", None),
    ("I would rate it highly.", None), ("", None), ("[[3]] and then [[4 or 5]]", None),
])
def test_score_parsing(reply, score):
    assert judge.parse_score(reply) == score


def test_benchmark_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"idx": 1, "prompt": "p", "query": "q", "answer": "a"}) + "\n{\"idx\": 2}\n")
    with pytest.raises(ConfigError, match="line 2"):
        longbench.load_benchmark(bad, None)
    good = tmp_path / "g.jsonl"
    good.write_text(json.dumps({"idx": 7, "prompt": "p", "query": "q", "answer": "a"}) + "\n")
    with pytest.raises(ConfigError, match="no examples for idx 7"):
        longbench.load_benchmark(good, SAMPLE_SHOTS)


def test_middle_truncation_keeps_head_and_tail_and_fits(tokenizer):
    text = "HEADMARK " + " ".join(local_corpus())[:40000] + " TAILMARK why?"
    cut, truncated = longbench.fit_prompt(tokenizer, text, context_len=2048, answer_tokens=100)
    assert truncated and cut.startswith("HEADMARK") and cut.endswith("TAILMARK why?")
    n = prompt_tokens(tokenizer, cut)
    assert 2048 - 100 - 32 <= n <= 2048 - 100  # uses the room, never exceeds it
    same, truncated = longbench.fit_prompt(tokenizer, "short prompt", 2048, 100)
    assert (same, truncated) == ("short prompt", False)


@pytest.fixture(scope="module", params=[4096, 300], ids=["tiny-vocab4096", "vocab300"])
def any_tokenizer(request, tmp_path_factory, tokenizer):
    """The tiny model's tokenizer, and one with a very different vocabulary (its '.' tokens differ)."""
    if request.param == 4096:
        return tokenizer
    return build_tokenizer(tmp_path_factory.mktemp("tok300"), vocab_size=request.param)


@pytest.mark.parametrize("length", [1500, 4000])
def test_needle_lands_at_the_requested_depth_on_a_sentence_boundary(any_tokenizer, length):
    cfg = NeedleConfig(context_lengths=[length])
    filler = needle.load_haystack(None)
    hay = needle.make_haystack(any_tokenizer, filler, length)
    assert hay.n_tokens == length and len(hay.boundaries) > length // 80
    # a needle lands within one sentence of its target: the longest sentence (the cut-off tail included) bounds
    # the distance (a few %), where the peer bug would put every needle at 0%
    gaps = [b - a for a, b in zip([0, *hay.boundaries], [*hay.boundaries, hay.n_tokens], strict=True)]
    tolerance = 100 * max(gaps) / hay.n_tokens + 0.5
    assert tolerance < 15
    for depth in (0, 10, 25, 50, 75, 90, 100):
        text, actual = needle.insert_needle(hay, cfg.needle, depth)
        assert abs(actual - depth) <= tolerance, (depth, actual)
        before = text[:text.index(cfg.needle)].rstrip()
        assert before == "" or before[-1] in ".!?\"')", before[-40:]  # after a whole sentence
        tokens_before = len(any_tokenizer(before, add_special_tokens=False)["input_ids"])
        assert abs(100 * tokens_before / length - depth) <= tolerance + 1


def test_needle_prompt_has_the_requested_length_and_one_needle(tokenizer):
    cfg = NeedleConfig(context_lengths=[1500])
    messages, facts = needle.build_prompt(tokenizer, cfg, needle.load_haystack(None), 1500, 50)
    assert facts["prompt_tokens"] == 1500
    assert messages[-1]["content"].count(cfg.needle) == 1 and messages[-1]["content"].endswith(cfg.question)
    assert 40 <= facts["actual_depth_percent"] <= 60


def test_exact_match_grading():
    assert needle.is_correct("The secret is smoked rosemary!", "smoked rosemary")
    assert not needle.is_correct("The secret is rosemary, smoked lightly.", "smoked rosemary")
    assert not needle.is_correct(None, "smoked rosemary")
    assert needle.normalize("smoked rosemary") not in needle.normalize(needle.load_haystack(None))


def test_the_shipped_example_config_validates():
    from longalign_trainer.evaluate.config import DATA_DIR

    cfg = load_config(DATA_DIR / "example.yaml")
    assert cfg.judge.repeats == 2 and cfg.judge.temperature == 0 and cfg.model.temperature == 0
    assert cfg.longbench_chat is not None and cfg.needle is not None
