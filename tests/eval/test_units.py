"""Evaluation pieces that need no server: config, judge prompt and parsing, truncation, needle placement."""

from __future__ import annotations

import json
import re

import pytest
from evalkit import SAMPLE, SAMPLE_SHOTS, STAND_IN_TEMPLATE, write
from transformers import AutoTokenizer

from longalign_trainer.chat_tokens import prompt_tokens
from longalign_trainer.evaluate import judge, longbench, needle
from longalign_trainer.evaluate.config import ConfigError, JudgeConfig, NeedleConfig, load_config
from longalign_trainer.tiny_model import build_tokenizer, local_corpus


class FakeClient:
    """What ``Judge`` reads of its client before any request (building prompts sends nothing)."""

    engine = type("Engine", (), {"concurrency": 1})()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_operator_envelope_becomes_an_eval_config(tmp_path):
    """The file the operator renders for the eval pod loads as is; the judge key is only named, never carried."""
    envelope = {
        "stage": "evaluation",
        "run": "r1",
        "attempt": 0,
        "baseModelPath": "/models/base",
        "outputDir": "/checkpoints/r1",
        "resultsDir": "/results/r1",
        "dataDir": "/data/r1",
        "terminationMessagePath": "/dev/termination-log",
        "evaluation": {
            "gpus": 4,
            "longBenchChat": {
                "path": "lbc/test.jsonl",
                "fewShotPath": "/abs/shots.json",
                "promptPath": "lbc/prompt_fs.txt",
            },
            "needle": {"contextLengths": [1000, 8000], "depthsPercent": [10, 90]},
            "judge": {
                "endpoint": "https://judge.example/v1",
                "model": "gpt-4",
                "apiKeySecretRef": {"name": "judge", "key": "api-key"},
            },
        },
    }
    cfg = load_config(write(tmp_path / "config.json", envelope))
    assert str(cfg.model.path) == "/checkpoints/r1/model"  # the training stage's export
    assert cfg.model.tensor_parallel_size == 4 and cfg.model.base_url is None
    assert str(cfg.longbench_chat.path) == "/data/r1/lbc/test.jsonl"
    assert str(cfg.longbench_chat.few_shot_path) == "/abs/shots.json"
    assert str(cfg.longbench_chat.judge_prompt_path) == "/data/r1/lbc/prompt_fs.txt"
    assert cfg.longbench_chat.judge_prompt == "published"
    assert cfg.needle.context_lengths == [1000, 8000] and cfg.needle.depths_percent == [10, 90]
    assert (cfg.judge.base_url, cfg.judge.model, cfg.judge.api_key_env) == (
        "https://judge.example/v1",
        "gpt-4",
        "LONGALIGN_JUDGE_API_KEY",
    )
    assert (cfg.judge.temperature, cfg.judge.attempts) == (0.0, 5)  # the paper's judge setup
    assert str(cfg.output_dir) == "/results/r1" and str(cfg.termination_message_path) == "/dev/termination-log"
    envelope["evaluation"]["checkpointPath"] = "other-run/model"
    assert str(load_config(write(tmp_path / "c2.json", envelope)).model.path) == "/checkpoints/other-run/model"


def test_config_errors_name_the_field(tmp_path):
    bad = {
        "model": {"path": "m", "temperature": -1},
        "output_dir": "o",
        "judge": {"base_url": "http://j/v1", "model": "j", "repeats": 0},
        "needle": {"context_lengths": [1000], "key_fact": "absent words"},
    }
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path / "bad.json", bad))
    text = str(e.value)
    assert "model.temperature" in text and "judge.repeats" in text and "needle: key_fact must occur in needle" in text
    with pytest.raises(ConfigError, match="longbench_chat needs a judge"):
        load_config(
            write(
                tmp_path / "nojudge.json",
                {"model": {"path": "m"}, "output_dir": "o", "longbench_chat": {"path": "b", "judge_prompt": "ours"}},
            )
        )
    with pytest.raises(ConfigError, match="needle.grade_with_judge needs a judge"):
        load_config(
            write(
                tmp_path / "nojudge2.json",
                {"model": {"path": "m"}, "output_dir": "o", "needle": {"grade_with_judge": True}},
            )
        )


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


def test_the_published_judge_prompt_is_the_template_filled_as_eval_py_fills_it():
    """THUDM/LongAlign's LongBench_Chat/eval.py: template.format(question, answer, a1, s1, a2, s2, a3, s3,
    prediction), its system prompt; a stand-in template of prompt_fs.txt's shape, filled here by hand."""
    case = longbench.load_benchmark(SAMPLE, SAMPLE_SHOTS, examples_per_case=3)[1]
    template = judge.load_template(STAND_IN_TEMPLATE)
    grader = judge.Judge(JudgeConfig(base_url="http://j/v1", model="j"), FakeClient(), seed=0, template=template)
    prediction = "  The line opened in 1874.\nThen it closed.\n"
    a, b, c = case.examples
    by_hand = (
        STAND_IN_TEMPLATE.read_text()
        .replace("{}", case.query, 1)
        .replace("{}", case.answer, 1)
        .replace("{}", a["answer"], 1)
        .replace("{}", str(a["score"]), 1)
        .replace("{}", b["answer"], 1)
        .replace("{}", str(b["score"]), 1)
        .replace("{}", c["answer"], 1)
        .replace("{}", str(c["score"]), 1)
        .replace("{}", "The line opened in 1874. Then it closed.", 1)
    )
    for repeat in (0, 1):  # the published order, every time
        assert grader.messages(case.idx, case.query, case.answer, case.examples, prediction, repeat) == [
            {"role": "system", "content": "You're a good assistant at evaluating the quality of texts."},
            {"role": "user", "content": by_hand},
        ]
    assert by_hand.endswith("Rating: ")  # nothing stripped


def test_a_template_of_another_shape_or_missing_published_files_are_refused(tmp_path):
    wrong = tmp_path / "prompt_fs.txt"
    wrong.write_text("Question {} answer {} rate: {}")
    with pytest.raises(ConfigError, match=r"is not the published judge template \(3 fields; prompt_fs.txt has 9"):
        judge.load_template(wrong)
    with pytest.raises(ConfigError, match="cannot read .*nowhere.txt.*bring prompt_fs.txt"):
        judge.load_template(tmp_path / "nowhere.txt")
    base = {"model": {"path": "m"}, "output_dir": "o", "judge": {"base_url": "http://j/v1", "model": "j"}}
    with pytest.raises(ConfigError, match="the published judge prompt needs judge_prompt_path: bring prompt_fs.txt"):
        load_config(write(tmp_path / "c.json", {**base, "longbench_chat": {"path": "b", "few_shot_path": "f"}}))
    two = tmp_path / "shots.json"
    two.write_text(json.dumps([[{"answer": "x", "score": 1}, {"answer": "y", "score": 2}]] * 3))
    with pytest.raises(ConfigError, match="entry 0 has 2 examples; the published judge prompt takes 3"):
        longbench.load_benchmark(SAMPLE, two, examples_per_case=3)


def test_the_published_test_cases_json_list_is_read_like_jsonl(tmp_path):
    cases = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    listed = write(tmp_path / "test_cases.json", cases)
    assert longbench.load_benchmark(listed, SAMPLE_SHOTS) == longbench.load_benchmark(SAMPLE, SAMPLE_SHOTS)
    write(tmp_path / "bad.json", [cases[0], {"idx": 2}])
    with pytest.raises(ConfigError, match="bad.json entry 1: expected idx, prompt, query, answer"):
        longbench.load_benchmark(tmp_path / "bad.json", None)


def test_published_score_is_the_first_number_in_the_last_brackets():
    assert judge.published_score("Compared with [[10]] and [[2]], I give [[6]].") == 6.0
    assert judge.published_score("[[7.5 out of 10]]") == 7.5 and judge.published_score("[[n/a]]") is None


def test_examples_are_shuffled_per_run_and_per_repeat():
    examples = [{"answer": f"a{i}", "score": i} for i in range(1, 4)]
    orders = {
        tuple(e["score"] for e in judge.shuffled(examples, seed, 1, repeat)) for seed in range(6) for repeat in range(2)
    }
    assert len(orders) >= 3  # not the reference code's fixed order
    assert judge.shuffled(examples, 5, 1, 0) == judge.shuffled(examples, 5, 1, 0)  # reproducible within a run


@pytest.mark.parametrize(
    "reply,score",
    [
        ("The answer gets the year wrong but the place right. Rating: [[4]]", 4.0),
        ("Compared with examples rated [[10]] and [[1]], this deserves [[7]].", 7.0),
        ("[[ 9 ]]", 9.0),
        ("Rating: 8/10", 8.0),
        ("[[12]]", None),
        ("[[0]]", None),
        ("[[good]]", None),
        ("I would rate it highly.", None),
        ("", None),
        ("[[3]] and then [[4 or 5]]", None),
    ],
)
def test_score_parsing(reply, score):
    assert judge.parse_score(reply) == score


def test_benchmark_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"idx": 1, "prompt": "p", "query": "q", "answer": "a"}) + '\n{"idx": 2}\n')
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
        before = text[: text.index(cfg.needle)].rstrip()
        assert before == "" or before[-1] in ".!?\"')", before[-40:]  # after a whole sentence
        tokens_before = len(any_tokenizer(before, add_special_tokens=False)["input_ids"])
        assert abs(100 * tokens_before / length - depth) <= tolerance + 1


def test_needle_prompt_has_the_requested_length_and_one_needle(tokenizer):
    cfg = NeedleConfig(context_lengths=[1500])
    messages, facts = needle.build_prompt(tokenizer, cfg, needle.load_haystack(None), 1500, 50)
    assert facts["prompt_tokens"] == 1500
    assert messages[-1]["content"].count(cfg.needle) == 1 and messages[-1]["content"].endswith(cfg.question)
    assert 40 <= facts["actual_depth_percent"] <= 60


ABBREVIATED = (
    'Mr. Smith met John D. Rockefeller in 1901. "We shall build," he said. "Where?" asked the clerk. '
    "The minutes are on p. 166 of vol. 2, e.g. in the appendix. The U.S. delegation (led by Dr. Hale) "
    "left at noon! Was it late? It was. "
)


def test_needle_gaps_respect_closing_quotes_and_abbreviations(any_tokenizer):
    """Every place a needle can go is after a whole sentence: not inside "...," he said, not after an initial
    or an abbreviation, and at every real sentence end."""
    starts = [ABBREVIATED[e : e + 12] for _, e in needle.sentence_gaps(ABBREVIATED)]
    assert starts == ['"We shall bu', '"Where?" ask', "The minutes ", "The U.S. del", "Was it late?", "It was. "]
    assert len(needle.sentence_gaps(ABBREVIATED * 3)) == 3 * 6 + 2  # and the two joins between copies
    hay = needle.make_haystack(any_tokenizer, ABBREVIATED, 600)
    assert len(hay.boundaries) >= 20
    for k in hay.boundaries:
        cut = hay.offsets[k - 1][1]
        before = hay.text[:cut].rstrip()
        assert before[-1] in '.!?"' and not before.endswith(("D.", "p.", "Mr.", "Dr.", "e.g.", "vol.", "U.S.")), before[
            -30:
        ]
        assert not (hay.text[:cut].endswith((".", "?")) and hay.text[cut : cut + 1] == '"'), before[-30:]  # not before
        #                                                                             the sentence's closing quote


def test_a_folder_of_txt_files_is_a_haystack_in_path_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("Second file here. It ends.")
    (tmp_path / "a.txt").write_text("First file here. It ends too.")
    (tmp_path / "notes.md").write_text("Not a haystack file.")
    assert needle.load_haystack(tmp_path) == "First file here. It ends too. Second file here. It ends."
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no .txt files"):
        needle.load_haystack(tmp_path / "empty")


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
