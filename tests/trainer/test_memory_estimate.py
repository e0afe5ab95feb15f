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

from longalign_trainer.train.memory_estimate import (
    GIB,
    DoesNotFit,
    ModelShape,
    Setting,
    activation_bytes,
    check,
    choose,
    describe,
    estimate,
)

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
TWO_LAYERS8B = ModelShape.from_config(LlamaConfig(num_hidden_layers=2, **LLAMA8B))
FULL8B = ModelShape.from_config(LlamaConfig(num_hidden_layers=32, **LLAMA8B))


@pytest.mark.parametrize(
    "shape,gpu_gib,stage,keeps,layers",
    [
        (ISSUE9, 139, 2, "matmuls", 0),  # every activation fits: nothing is checkpointed
        (ISSUE9, 80, 2, "matmuls", 7),
        (ISSUE9, 40, 2, "attention", 14),
        (ISSUE9, 30, 2, "nothing", 16),
        (WIDTH8B, 139, 2, "matmuls", 0),  # estimate 126.2 GiB, measured 120.0
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


def test_the_chosen_setting_is_described_for_people_with_its_estimate():
    chosen = choose(WIDTH8B, Setting(2, "attention", 65536), 80 * GIB, None, None)
    text = describe(WIDTH8B, chosen, estimate(WIDTH8B, chosen), 80 * GIB)
    e = estimate(WIDTH8B, chosen)
    assert text == (
        "ZeRO-2, 8 of 8 layers checkpointed (keeping attention); memory estimate "
        f"{e.gpu / GIB:.1f} GiB per GPU of 80.0 (model states {e.gpu_model_states / GIB:.1f} + activations "
        f"{e.gpu_activations / GIB:.1f} at 65536 tokens per pack), host {e.host / GIB:.1f} GiB per node"
    )
    offloaded = Setting(3, "nothing", 1 << 20, offload_optimizer=True, offload_checkpoints=True, tiled_mlp=True)
    assert describe(FULL8B, offloaded, estimate(FULL8B, offloaded), None).startswith(
        "ZeRO-3 (optimizer in host memory), 32 of 32 layers checkpointed (recomputed in full, their inputs in host "
        "memory), tiled MLP; memory estimate "
    )
    unchecked = Setting(2, "matmuls", 65536, checkpoint_layers=0)
    assert describe(ISSUE9, unchecked, estimate(ISSUE9, unchecked), None).startswith(
        "ZeRO-2, no layer recomputed (all 16 keep their activations); memory estimate "
    )


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


# Peak GPU memory (torch.cuda.max_memory_allocated) of `longalign train`, one H200, 2026-12-01
# (benchmarks/train_product.py; README "Training speed" and "Long sequences on one GPU").
MEASURED_GIB = [  # (shape, ZeRO stage, keeps, checkpointed layers (None: all), pack tokens, features, peak GiB)
    (ISSUE9, 2, "matmuls", None, 65536, {}, 56.6),
    (ISSUE9, 2, "matmuls", 0, 65536, {}, 74.4),
    (ISSUE9, 2, "attention", None, 65536, {}, 26.6),
    (ISSUE9, 2, "nothing", None, 65536, {}, 22.8),
    (ISSUE9, 3, "nothing", None, 65536, {}, 22.8),
    (WIDTH8B, 2, "matmuls", None, 65536, {}, 100.7),
    (WIDTH8B, 2, "matmuls", 2, 65536, {}, 114.5),
    (WIDTH8B, 2, "matmuls", 0, 65536, {}, 120.0),  # the defaults since the estimate's recalibration
    (WIDTH8B, 3, "nothing", None, 65536, {}, 58.7),
    # One sequence per step, offloaded checkpoints and tiled MLP: the run's second step (its first one, at 256k,
    # peaks in the optimizer step: AdamW creates its states there, after that step's backward pass).
    (TWO_LAYERS8B, 2, "nothing", None, 519867, {"offload_checkpoints": True, "tiled_mlp": True}, 75.17),
]


@pytest.mark.parametrize("shape,stage,keeps,layers,tokens,features,measured", MEASURED_GIB)
def test_the_estimate_is_within_ten_percent_of_the_measured_peak_and_not_below_it(
    shape, stage, keeps, layers, tokens, features, measured
):
    estimated = estimate(shape, Setting(stage, keeps, tokens, checkpoint_layers=layers, **features)).gpu / GIB
    assert measured <= estimated <= measured * 1.1


# benchmarks/long_sequence.py, one H200, 2026-12-01 (README "Long sequences on one GPU"): one sequence per step,
# every memory feature on (full recomputation, offloaded checkpoints, tiled MLP, chunked loss), bf16 AdamW
# without DeepSpeed: 8 bytes per parameter of model states (parameters, gradients, AdamW's two states).
LONG_SEQUENCE_GIB = [  # (shape, tokens, peak GPU GiB, peak host GiB (the process's resident set) or None)
    (TWO_LAYERS8B, 262144, 36.35, None),
    (TWO_LAYERS8B, 1048576, 115.0, None),
    (FULL8B, 262144, 85.1, 65.7),
    (FULL8B, 393216, 98.21, 97.8),
]


@pytest.mark.parametrize("shape,tokens,gpu,host", LONG_SEQUENCE_GIB)
def test_the_activations_at_long_sequences_are_what_the_runs_used(shape, tokens, gpu, host):
    """The activation part of the estimate (the same memory model as the trainer's) on top of the script's
    model states, against the measured peak: within 10 % and never under it; the host's pinned checkpoints too."""
    s = Setting(2, "nothing", tokens, offload_checkpoints=True, tiled_mlp=True)
    assert gpu <= (8 * shape.params + activation_bytes(shape, s)) / GIB <= gpu * 1.1
    if host is not None:  # the process (PROCESS_HOST_BYTES) + every layer's input, pinned (no model load here)
        estimated_host = estimate(shape, s).host - 2 * shape.params
        assert host <= estimated_host / GIB <= host * 1.1


def test_the_whole_8b_at_512k_is_refused_on_a_128_gb_host():
    """32 layers' offloaded checkpoints at 512k tokens are 128 GiB of pinned host memory (plus the bf16 model
    that every rank loads first): more than the H200 machine's 124.8 GiB available (384k, 96 GiB, trained)."""
    s = Setting(2, "nothing", 524288, offload_checkpoints=True, tiled_mlp=True)
    with pytest.raises(DoesNotFit, match=r"host memory: the 1 rank\(s\) of a node need ~1[4-9][0-9]\.[0-9] GiB"):
        check(estimate(FULL8B, s), s, None, int(124.8 * GIB))


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
        [sys.executable, "-m", "longalign_trainer.cli", "train", "--config", str(config)],
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
