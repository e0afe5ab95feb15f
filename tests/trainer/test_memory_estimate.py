"""The memory estimate: which ZeRO stage and checkpointing fit, how close it is to measured peaks, and a config
that cannot fit refused before anything loads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from transformers import LlamaConfig

from longalign_trainer.train.memory_estimate import GIB, ModelShape, Setting, choose, estimate

ISSUE9 = ModelShape.from_config(
    LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=4,
    )
)
LLAMA8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8
)
WIDTH8B = ModelShape.from_config(LlamaConfig(num_hidden_layers=8, **LLAMA8B))


@pytest.mark.parametrize(
    "shape,gpu_gib,stage,keeps,layers",
    [
        (ISSUE9, 139, 2, "matmuls", 0),  # every activation fits: nothing is checkpointed
        (ISSUE9, 80, 2, "matmuls", 7),
        (ISSUE9, 40, 2, "attention", 14),
        (ISSUE9, 30, 2, "nothing", 16),
        (WIDTH8B, 139, 2, "matmuls", 2),
        (WIDTH8B, 80, 2, "attention", 8),
        (WIDTH8B, 40, 3, "nothing", 8),
    ],
)
def test_zero2_the_most_kept_activations_and_the_fewest_checkpointed_layers_are_chosen_where_they_fit(
    shape, gpu_gib, stage, keeps, layers
):
    chosen = choose(shape, Setting(2, "attention", 65536), gpu_gib * GIB, None, None)
    assert (chosen.zero_stage, chosen.checkpoint_keeps, chosen.checkpoint_layers) == (stage, keeps, layers)
    assert estimate(shape, chosen).gpu * 1.1 <= gpu_gib * GIB or stage == 3
    if layers and stage == 2:  # one layer fewer checkpointed would not have fitted
        fewer = estimate(shape, Setting(2, keeps, 65536, checkpoint_layers=layers - 1)).gpu
        assert fewer * 1.1 > gpu_gib * GIB


def test_what_the_config_says_is_kept():
    chosen = choose(ISSUE9, Setting(2, "attention", 65536), 139 * GIB, 3, None)
    assert (chosen.zero_stage, chosen.checkpoint_keeps) == (3, "nothing")  # ZeRO-3 recomputes everything
    chosen = choose(ISSUE9, Setting(2, "attention", 65536), 139 * GIB, None, "attention")
    assert (chosen.zero_stage, chosen.checkpoint_keeps) == (2, "attention")
    chosen = choose(ISSUE9, Setting(2, "attention", 65536), 139 * GIB, None, "attention", 16)
    assert (chosen.zero_stage, chosen.checkpoint_keeps, chosen.checkpoint_layers) == (2, "attention", 16)


def test_all_gathered_keys_and_values_are_counted_where_a_layer_holds_them():
    """Sequence parallelism with all-gathered K/V (SP 8, 1M-token packs, the 8B's widths, full recomputation):
    the other 7 ranks' keys and values (7/8 M tokens × 2 × 1024 values, bf16: 3.5 GiB) are held by the layer
    being recomputed and once more as their gradient; each layer left unchecked holds them too."""
    t = 1 << 17  # the rank's slice
    gathered = 7 * t * 2 * 2 * WIDTH8B.kv_width
    for layers, extra_layers in ((None, 2), (6, 4)):  # all 8 layers checkpointed; 2 of them not
        plain = estimate(WIDTH8B, Setting(2, "nothing", t, checkpoint_layers=layers))
        gathers = estimate(WIDTH8B, Setting(2, "nothing", t, checkpoint_layers=layers, gathered_kv_tokens=7 * t))
        assert gathers.gpu_activations - plain.gpu_activations == extra_layers * gathered
    assert gathered == 3.5 * GIB


# Peak GPU memory (torch.cuda.max_memory_allocated) of `longalign train`, one H200, 64k packs, 2026-12-01
# (benchmarks/train_product.py; README "Training speed").
MEASURED_GIB = [  # (shape, ZeRO stage, keeps, checkpointed layers (None: all), peak GiB)
    (ISSUE9, 2, "matmuls", None, 56.6),
    (ISSUE9, 2, "matmuls", 0, 74.4),
    (ISSUE9, 2, "attention", None, 26.6),
    (ISSUE9, 2, "nothing", None, 22.8),
    (ISSUE9, 3, "nothing", None, 22.8),
    (WIDTH8B, 2, "matmuls", None, 100.7),
    (WIDTH8B, 2, "matmuls", 2, 114.5),
    (WIDTH8B, 3, "nothing", None, 58.7),
]


@pytest.mark.parametrize("shape,stage,keeps,layers,measured", MEASURED_GIB)
def test_the_estimate_is_within_ten_percent_of_the_measured_peak_and_not_below_it(
    shape, stage, keeps, layers, measured
):
    estimated = estimate(shape, Setting(stage, keeps, 65536, checkpoint_layers=layers)).gpu / GIB
    assert measured <= estimated <= measured * 1.1


def test_a_config_that_cannot_fit_is_refused_before_loading_with_the_numbers(tmp_path):
    """The paper's setting for the full 8 B (ZeRO-3 + optimizer offload) on one GPU: its host memory (16 bytes
    per parameter offloaded, 128 GiB, plus the bf16 model) exceeds the node's; refused at once, exit 2."""
    model = tmp_path / "model"
    LlamaConfig(num_hidden_layers=32, **LLAMA8B).save_pretrained(model)  # no weights: nothing may load them
    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n"
    )
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_path": str(model),
                "data": [{"path": str(data)}],
                "output_dir": str(tmp_path / "out"),
                "zero_stage": 3,
                "offload_optimizer": True,
                "termination_message_path": str(tmp_path / "t"),
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "longalign_operator.cli", "train", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "this config cannot fit" in done.stderr and "host memory" in done.stderr
    needed = float(re.search(r"need ~([0-9.]+) GiB", done.stderr).group(1))
    assert needed > 16 * 8.03e9 / GIB  # the offloaded fp32 weights, AdamW states and gradients alone
    summary = json.loads((tmp_path / "t").read_text())
    assert summary["ok"] is False and "cannot fit" in summary["error"]
