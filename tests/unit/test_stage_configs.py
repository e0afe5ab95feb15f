"""The one contract between operator and stages: the config file the operator renders for each stage is one
that stage's own loader accepts, with the spec's settings carried over."""

from __future__ import annotations

import json

from longalign_operator import builders
from longalign_operator.builders import Run
from longalign_operator.spec import parse
from longalign_trainer.datagen.config import load_config as load_datagen
from longalign_trainer.train.config import load_config as load_train

SPEC = parse(
    {
        "image": "trainer:1",
        "baseModelPath": "/models/llama-8b",
        "storage": {"models": {"claimName": "m"}, "data": {"claimName": "d"}, "checkpoints": {"claimName": "c"}},
        "dataGeneration": {
            "teacher": {"modelPath": "/models/teacher", "replicas": 2, "maxModelLen": 32768},
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


def test_evaluation_reads_the_operators_config(tmp_path):
    from longalign_trainer.evaluate.config import load_config as load_eval

    cfg = load_eval(rendered("evaluation", tmp_path))
    dumped = json.loads(cfg.model_dump_json())
    assert dumped["model"]["path"] == "/checkpoints/r1/model"  # what training exports
    assert (dumped["needle"]["context_lengths"], dumped["needle"]["depths_percent"]) == ([1000, 2000], [50.0])
    assert dumped["output_dir"] == "/results/r1" and dumped["termination_message_path"] == "/dev/termination-log"
