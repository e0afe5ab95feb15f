"""Training configs: every shipped example validates, and mistakes are refused by field name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from longalign_trainer.train.config import TrainConfig, load_config

EXAMPLES = sorted((Path(__file__).parents[2] / "trainer/longalign_trainer/train/examples").glob("*.yaml"))


def test_there_are_shipped_examples():
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_shipped_example_validates(path):
    cfg = load_config(path)
    assert cfg.max_tokens_per_pack % 128 == 0 and cfg.checkpoints == cfg.output_dir / "checkpoints"


BASE = {"model_path": "m", "data": [{"path": "a.jsonl"}], "output_dir": "out"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"max_tokens_per_pack": 1000}, "max_tokens_per_pack: Value error, must be a multiple of 128, got 1000"),
        ({"strategy": "shuffle"}, "strategy: Input should be 'naive', 'packing' or 'sorted'"),
        (
            {"sequence_parallel_attention": "ring"},
            "sequence_parallel_attention: Input should be 'auto', 'ulysses' or 'allgather_kv'",
        ),
        ({"data": []}, "data: List should have at least 1 item"),
        ({"data": [{"path": "a.jsonl", "ratio": -1}]}, "data.0.ratio: Input should be greater than 0"),
        ({"zero_stage": 2, "offload_params": True}, "offload_params: needs zero_stage 3"),
        (
            {"zero_stage": 3, "compile_layers": True},
            "compile_layers: true cannot apply with zero_stage 3 (it gathers each layer's parameters in module hooks",
        ),
        ({"tiled_mlp": True, "compile_layers": True}, "compile_layers: true cannot apply with tiled_mlp"),
        ({"fused_ops": False, "compile_layers": True}, "compile_layers: true cannot apply with fused_ops: false"),
        ({"adam_betas": [0.9, 1.5]}, "adam_betas: Value error, both betas must be in [0, 1)"),
        ({"learning_rte": 1e-5}, "learning_rte: Extra inputs are not permitted"),
    ],
)
def test_mistakes_are_named_by_field(tmp_path, change, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, **change}))
    with pytest.raises(ValueError) as err:
        load_config(path)
    assert message in str(err.value)


def test_defaults_follow_the_paper():
    cfg = TrainConfig.model_validate(BASE)
    assert (cfg.learning_rate, cfg.lr_schedule, cfg.warmup_ratio, cfg.adam_betas) == (2e-5, "cosine", 0.03, (0.9, 0.95))
    assert (cfg.strategy, cfg.loss_weighting, cfg.max_tokens_per_pack) == ("packing", True, 65536)
    assert (cfg.zero_stage, cfg.checkpoint_keeps) == (None, None)  # chosen by what fits (train/memory_estimate.py)
