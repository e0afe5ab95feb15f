"""The one contract between operator and stages: the config file the operator renders for each stage is one
that stage's own loader accepts, with the spec's settings carried over."""

from __future__ import annotations

import json

import pytest

from longalign_operator import builders
from longalign_operator.builders import Run
from longalign_operator.spec import Teacher, parse
from longalign_trainer.datagen.config import load_config as load_datagen
from longalign_trainer.datagen.stage_config import SPEC_TEACHER_KEYS
from longalign_trainer.train.config import load_config as load_train

SPEC = parse(
    {
        "image": "trainer:1",
        "baseModelPath": "/models/llama-8b",
        "storage": {"models": {"claimName": "m"}, "data": {"claimName": "d"}, "checkpoints": {"claimName": "c"}},
        "dataGeneration": {
            "teacher": {
                "modelPath": "/models/teacher",
                "replicas": 2,
                "maxModelLen": 32768,
                "extraArgs": ["--enforce-eager"],
            },
            "samplesPerDocument": 2,
            "shortData": {"path": "/data/short.jsonl", "ratio": 0.5},
        },
        "training": {
            "maxTokensPerPack": 32768,
            "batching": "sorted",
            "lossWeighting": False,
            "globalBatchSize": 16,
            "deepspeed": {"zeroStage": 2, "offloadOptimizer": True},
            "optimizer": {"learningRate": 1e-5},
            "checkpointEverySteps": 50,
            "sequenceParallelSize": 2,
        },
        "evaluation": {"needle": {"contextLengths": [1000, 2000], "depthsPercent": [50]}},
    }
)
RUN = Run("r1", "ns", "uid", {}, SPEC)


def rendered(stage: str, tmp_path):
    cm = builders.config_map(RUN, stage, 1)
    path = tmp_path / f"{stage}.json"
    path.write_text(cm["data"]["config.json"])
    return path


def test_training_reads_the_operators_config(tmp_path):
    cfg = load_train(rendered("training", tmp_path))
    assert str(cfg.model_path) == "/models/llama-8b" and str(cfg.output_dir) == "/checkpoints/r1"
    assert [str(d.path) for d in cfg.data] == ["/data/r1/data.jsonl"]  # what data generation writes
    assert (cfg.max_tokens_per_pack, cfg.strategy, cfg.loss_weighting, cfg.global_batch_size) == (
        32768,
        "sorted",
        False,
        16,
    )
    assert (cfg.zero_stage, cfg.offload_optimizer, cfg.learning_rate, cfg.checkpoint_every_steps) == (2, True, 1e-5, 50)
    assert cfg.sequence_parallel_size == 2
    assert str(cfg.termination_message_path) == "/dev/termination-log"


def test_data_generation_reads_the_operators_config(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGALIGN_TEACHER_URL", builders.teacher_urls(RUN))
    cfg = load_datagen(rendered("dataGeneration", tmp_path))
    dumped = json.loads(cfg.model_dump_json())
    assert dumped["output_dir"] == "/data/r1"
    assert len(dumped["teacher"]["base_urls"]) == 2 and dumped["questions_kept"] == 2


def test_every_teacher_field_of_the_spec_is_one_the_data_generation_stage_knows():
    """The stage passes a teacher key it does not know on as a setting of its own, which it then refuses (exit 2):
    a new spec field missing here would fail the data generation of every run that sets it."""
    assert {field.alias for field in Teacher.model_fields.values()} == SPEC_TEACHER_KEYS


def test_evaluation_reads_the_operators_config(tmp_path):
    from longalign_trainer.evaluate.config import load_config as load_eval

    cfg = load_eval(rendered("evaluation", tmp_path))
    dumped = json.loads(cfg.model_dump_json())
    assert dumped["model"]["path"] == "/checkpoints/r1/model"  # what training exports
    assert (dumped["needle"]["context_lengths"], dumped["needle"]["depths_percent"]) == ([1000, 2000], [50.0])
    assert dumped["output_dir"] == "/results/r1" and dumped["termination_message_path"] == "/dev/termination-log"


def test_each_stages_settings_in_the_spec_reach_its_own_config_over_what_the_spec_derives(tmp_path, monkeypatch):
    from longalign_trainer.evaluate.config import load_config as load_eval

    raw = SPEC.model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["dataGeneration"]["settings"] = {"teacher": {"answer_max_tokens": 48}, "question_max_chars": 60}
    raw["training"]["settings"] = {"progress_interval_s": 0, "checkpoint_every_steps": 7}
    raw["evaluation"]["settings"] = {"model": {"max_tokens": 64}}
    run = Run("r1", "ns", "uid", {}, parse(raw))
    monkeypatch.setenv("LONGALIGN_TEACHER_URL", builders.teacher_urls(run))
    paths = {}
    for stage in ("dataGeneration", "training", "evaluation"):
        paths[stage] = tmp_path / f"{stage}.json"
        paths[stage].write_text(builders.config_map(run, stage, 1)["data"]["config.json"])
    datagen = json.loads(load_datagen(paths["dataGeneration"]).model_dump_json())
    assert (datagen["teacher"]["answer_max_tokens"], datagen["question_max_chars"]) == (48, 60)
    assert datagen["teacher"]["max_model_len"] == 32768  # the spec's teacher settings stay beside them
    train = load_train(paths["training"])
    assert (train.progress_interval_s, train.checkpoint_every_steps) == (0, 7)  # the setting wins over the spec's
    assert json.loads(load_eval(paths["evaluation"]).model_dump_json())["model"]["max_tokens"] == 64


def test_an_unknown_stage_setting_is_refused_by_the_stage_naming_the_key(tmp_path):
    from longalign_trainer.config_files import InputError

    raw = SPEC.model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["training"]["settings"] = {"progres_interval_s": 0}
    run = Run("r1", "ns", "uid", {}, parse(raw))
    path = tmp_path / "training.json"
    path.write_text(builders.config_map(run, "training", 1)["data"]["config.json"])
    with pytest.raises(InputError, match="progres_interval_s"):
        load_train(path)
