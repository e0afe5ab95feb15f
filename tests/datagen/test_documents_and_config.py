"""Documents are read from every supported format, tagged, measured, split or skipped, and configs fail by field."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import base_config, corpus_documents, write_config
from transformers import AutoTokenizer

from longalign_trainer.datagen.config import PROMPTS_DIR, ConfigError, load_config, parse_config
from longalign_trainer.datagen.documents import load_corpus


def datagen_command(config, summary) -> subprocess.CompletedProcess:
    """``longalign datagen --config CONFIG`` as a user runs it, its summary at ``summary``."""
    command = ["datagen", "--config", str(config), "--summary-path", str(summary)]
    return subprocess.run([sys.executable, "-m", "longalign_trainer.cli", *command], capture_output=True, text=True)


def test_corpus_reads_all_formats_tags_sources_splits_and_counts_skips(tmp_path, tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    docs = corpus_documents(4, 1200) + corpus_documents(1, 3600, start=60)  # ~500-900 tokens; ~1600-2000
    root = tmp_path / "docs"
    (root / "books").mkdir(parents=True)
    (root / "books" / "a.txt").write_text(docs[0])
    (root / "books" / "b.md").write_text(docs[1])
    (root / "dump").mkdir()
    with open(root / "dump" / "web.jsonl", "w") as f:
        f.write(json.dumps({"text": docs[2], "source": "web"}) + "\n")
        f.write("not json\n")
        f.write(json.dumps({"body": "no text field"}) + "\n")
        f.write(json.dumps({"text": "too short to keep"}) + "\n")
    pq.write_table(
        pa.table({"text": [docs[3], docs[0]], "id": ["paper-7", "paper-7"]}), root / "dump" / "papers.parquet"
    )  # a repeated id is skipped: resuming relies on ids
    (root / "long.txt").write_text(docs[4])  # more than max_tokens, less than twice: split in two
    (root / "notes.pdf").write_bytes(b"%PDF")
    cfg = parse_config(
        base_config(
            tmp_path,
            root,
            ["http://x/v1"],
            tiny_model_dir,
            sources={"dump/*.parquet": "papers"},
            min_tokens=200,
            max_tokens=1000,
        )
    )
    corpus = load_corpus(cfg, tok)
    by_id = {d.id: d for d in corpus.documents}
    assert {i: d.source for i, d in by_id.items()} == {
        "books/a.txt": "books",
        "books/b.md": "books",
        "dump/web.jsonl:0": "web",
        "dump/papers.parquet:paper-7": "papers",
        "long.txt#p0": "default",
        "long.txt#p1": "default",
    }
    assert dict(corpus.skipped) == {"bad_record": 2, "too_short": 1, "unsupported_file": 1, "duplicate_id": 1}
    for d in corpus.documents:
        assert d.n_tokens == len(tok(d.text, add_special_tokens=False)["input_ids"])
        assert 200 <= d.n_tokens <= 1000
    # the two parts together are the whole document, cut at a paragraph break
    long_text = (root / "long.txt").read_text()
    p0, p1 = by_id["long.txt#p0"].text, by_id["long.txt#p1"].text
    assert long_text.startswith(p0) and long_text.endswith(p1)
    assert long_text[len(p0) : len(long_text) - len(p1)].strip() == ""
    assert long_text[len(p0) :].startswith("\n") or p0.endswith((".", "\n"))

    skip_cfg = cfg.model_copy(update={"over_length": "skip"})
    skipped = load_corpus(skip_cfg, tok)
    assert skipped.skipped["too_long"] == 1
    assert not any(d.id.startswith("long.txt") for d in skipped.documents)


def test_invalid_config_names_each_field_and_the_command_exits_2(tmp_path):
    bad = {
        "documents_dir": str(tmp_path),
        "output_dir": str(tmp_path / "o"),
        "teacher": {"base_urls": ["http://t/v1"], "model": "m", "temperatur": 0.5},
        "task_types": ["general", "poetry"],
        "min_tokens": 10,
        "max_tokens": 5,
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "teacher.temperatur: Extra inputs are not permitted" in text
    done = datagen_command(path, tmp_path / "summary")
    assert done.returncode == 2
    assert "teacher.temperatur" in done.stderr

    # valid, but the teacher's tokenizer is not where it says: the command names the field, before any request
    ok = {k: v for k, v in bad.items() if k not in ("task_types", "min_tokens", "max_tokens")}
    ok["teacher"] = {"base_urls": ["http://t/v1"], "model": "m", "tokenizer": str(tmp_path / "missing")}
    path.write_text(yaml.safe_dump(ok))
    done = datagen_command(path, tmp_path / "summary")
    assert done.returncode == 2 and "teacher.tokenizer: " in done.stderr, done.stderr[-2000:]

    fixed = {**bad, "teacher": {"base_urls": ["http://t/v1"], "model": "m"}}
    path.write_text(yaml.safe_dump(fixed))
    with pytest.raises(ConfigError, match=r"min_tokens \(10\) is larger than max_tokens \(5\)"):
        load_config(path)
    path.write_text(yaml.safe_dump({**fixed, "max_tokens": 50}))
    with pytest.raises(ConfigError, match=r"no prompt file poetry.txt"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"'comparison' is asked of pairs of documents only; use comparison_ratio"):
        parse_config({**fixed, "max_tokens": 50, "task_types": ["general", "comparison"]})


@pytest.mark.parametrize(
    "broken", ["malformed YAML", "missing documents folder", "no usable document", "missing tokenizer folder"]
)
def test_bad_input_exits_2_with_one_line_naming_it_and_a_summary(tmp_path, tiny_model_dir, broken):
    docs = tmp_path / "docs"
    docs.mkdir()
    cfg = {
        "documents_dir": str(docs),
        "output_dir": str(tmp_path / "o"),
        "teacher": {"base_urls": ["http://127.0.0.1:9/v1"], "model": "m", "tokenizer": str(tiny_model_dir)},
    }
    expected = {
        "missing documents folder": f"documents_dir: {tmp_path / 'nowhere'} is not a folder; set it to",
        "no usable document": f"documents_dir: {docs} holds no usable document (0 files",
        "missing tokenizer folder": f"teacher.tokenizer: {tmp_path / 'no-tok'} is not a folder; set it to",
        "malformed YAML": f"{tmp_path / 'c.yaml'}: not valid YAML at line 2",
    }[broken]
    if broken == "missing documents folder":
        cfg["documents_dir"] = str(tmp_path / "nowhere")
    if broken == "missing tokenizer folder":
        cfg["teacher"]["tokenizer"] = str(tmp_path / "no-tok")
    path = tmp_path / "c.yaml"
    path.write_text("documents_dir: [x\n" if broken == "malformed YAML" else yaml.safe_dump(cfg))
    done = datagen_command(path, tmp_path / "summary")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    [line] = [x for x in done.stderr.splitlines() if x.startswith("datagen: ")]
    assert line.startswith(f"datagen: {expected}"), line
    summary = json.loads((tmp_path / "summary").read_text())
    assert summary["status"] == "bad_input" and summary["error"] == line.removeprefix("datagen: ")


def test_shipped_example_config_and_prompts_are_valid(tmp_path):
    example = PROMPTS_DIR.parent / "example.yaml"
    cfg = load_config(example)
    assert cfg.task_types == ["general", "summary", "reasoning", "extraction"]
    assert (cfg.questions_asked, cfg.questions_kept, cfg.types_per_document) == (5, 1, 1)  # the paper's procedure
    for prompt in PROMPTS_DIR.glob("*.txt"):
        assert "{n}" in prompt.read_text(), prompt
    # the user's own prompt folder overrides ours; a changed prompt changes the fingerprint (no silent resume)
    mine = tmp_path / "prompts"
    mine.mkdir()
    (mine / "general.txt").write_text((PROMPTS_DIR / "general.txt").read_text())
    ours = load_config(
        write_config(tmp_path / "c.json", {**yaml.safe_load(example.read_text()), "prompts_dir": str(mine)})
    )
    assert ours.prompt_path("general") == mine / "general.txt"
    assert ours.prompt_path("summary") == PROMPTS_DIR / "summary.txt"
    before = ours.fingerprint()
    (mine / "general.txt").write_text("Ask {n} questions about it.")
    assert ours.fingerprint() != before
    # speed settings and endpoints may change between a run and its resumption
    faster = ours.model_copy(update={"engine": ours.engine.model_copy(update={"concurrency": 512})})
    faster.teacher = ours.teacher.model_copy(update={"base_urls": ["http://other:8000/v1"]})
    assert faster.fingerprint() == ours.fingerprint()


def test_the_operators_stage_config_envelope_is_read_as_datagen_settings(tmp_path, monkeypatch):
    # the shape operator/longalign_operator/builders.py:stage_config renders for dataGeneration
    envelope = {
        "stage": "dataGeneration",
        "run": "r1",
        "attempt": 0,
        "baseModelPath": "/models/base",
        "outputDir": "/checkpoints/r1",
        "resultsDir": "/results/r1",
        "dataDir": str(tmp_path / "data"),
        "terminationMessagePath": "/dev/termination-log",
        "dataGeneration": {
            "teacher": {
                "modelPath": "/models/teacher",
                "servedName": "teacher",
                "replicas": 2,
                "gpusPerReplica": 8,
                "nodesPerReplica": 1,
                "maxModelLen": 65536,
            },
            "documentsPath": "/documents",
            "taskTypes": ["general", "summary", "comparison"],
            "samplesPerDocument": 2,
            "minDocumentTokens": 4096,
            "maxDocumentTokens": 32768,
            "shortData": {"path": "/data/sharegpt.jsonl", "ratio": 1.5},
        },
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(envelope))
    with pytest.raises(ConfigError, match=r"teacher.base_urls"):  # the URL comes from the environment
        load_config(path)
    monkeypatch.setenv("LONGALIGN_TEACHER_URL", "http://r1-teacher.ns.svc:8000/v1")
    cfg = load_config(path)
    assert cfg.teacher.base_urls == ["http://r1-teacher.ns.svc:8000/v1"]
    assert (cfg.teacher.model, cfg.teacher.tokenizer, cfg.teacher.max_model_len) == (
        "teacher",
        "/models/teacher",
        65536,
    )
    assert str(cfg.documents_dir) == "/documents" and cfg.output_dir == tmp_path / "data"
    assert (cfg.task_types, cfg.comparison_ratio, cfg.questions_kept) == (["general", "summary"], 0.5, 2)
    assert (cfg.min_tokens, cfg.max_tokens) == (4096, 32768)
    assert (str(cfg.short_data_path), cfg.short_ratio) == ("/data/sharegpt.jsonl", 1.5)
    assert cfg.engine.concurrency == 64  # enough requests in flight for both replicas
