"""Resume a checkpoint written by a different number of ranks (e.g. 2 GPUs -> 1, or 1 -> 2).

DeepSpeed's ZeRO checkpoints are partitioned per data-parallel rank and refuse another world size. Its
*universal* checkpoint format holds each parameter and optimizer state whole; any world size loads it (with
``"checkpoint": {"load_universal": true}`` in the DeepSpeed config). The first resume with another world size
converts the checkpoint once, beside the original (written under a temporary name, then renamed, like every
checkpoint), and loads that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

UNIVERSAL_TAG = "universal"


def saved_world_size(checkpoint: Path) -> int:
    """How many ranks wrote a checkpoint (each writes its own RNG state file)."""
    return len(list(checkpoint.glob("rng-rank*.pt")))


def make_universal(checkpoint: Path, state_tag: str) -> str:
    """Convert the checkpoint's DeepSpeed state to the universal format (once); the tag to load it by.

    Called by one rank while the others wait."""
    final = checkpoint / UNIVERSAL_TAG
    if not final.exists():
        tmp = checkpoint / f".tmp-{UNIVERSAL_TAG}"
        shutil.rmtree(tmp, ignore_errors=True)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "deepspeed.checkpoint.ds_to_universal",
                "--input_folder",
                str(checkpoint / state_tag),
                "--output_folder",
                str(tmp),
                "--num_extract_workers",
                "1",
                "--num_merge_workers",
                "1",
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"converting {checkpoint} for another number of ranks failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, final)
    return UNIVERSAL_TAG


def unshare_step_counters(optimizer) -> None:
    """Give each parameter group's optimizer state its own step counter.

    DeepSpeed 0.19's universal loader puts one and the same step tensor into every group's state; torch's
    Adam increments it in place once per group, so with two groups (decay / no decay) every step would count
    twice and the bias correction would drift from the uninterrupted run."""
    for state in optimizer.state.values():
        if hasattr(state.get("step"), "clone"):
            state["step"] = state["step"].clone()
