"""A checkpoint made by the training stage's own code: a few steps on the tiny model, then its export."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import yaml


def train_and_export(model_dir: Path, out: Path) -> Path:
    """Run ``longalign train`` (one process, ZeRO-1) for 4 steps; return its export folder (OUTPUT_DIR/model)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    words = ["the", "harbour", "town", "river", "boat", "rope", "clock", "garden", "slate", "enzyme", "bread"]
    with open(out / "data.jsonl", "w") as f:
        for _ in range(16):
            prompt = " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))
            f.write(
                json.dumps(
                    {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": prompt[:30]}]}
                )
                + "\n"
            )
    config = out / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_path": str(model_dir),
                "data": [{"path": str(out / "data.jsonl")}],
                "output_dir": str(out / "run"),
                "max_tokens_per_pack": 256,
                "global_batch_size": 4,
                "epochs": 1,
                "learning_rate": 1e-3,
                "zero_stage": 1,
                "progress_interval_s": 0,
                "termination_message_path": str(out / "summary.json"),
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
    assert done.returncode == 0, done.stderr[-3000:]
    export = out / "run" / "model"
    assert (export / "model.safetensors").is_file()
    return export
