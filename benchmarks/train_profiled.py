"""Where a steady `longalign train` step spends its time: the recipe's own loop, profiled (run by train_product.py
``--profile``, under torchrun like ``longalign train``).

Sets the run up exactly as ``longalign train --config FILE`` does (same config, same Recipe), then trains with
each phase of a step timed between CUDA synchronisations: building the packs on the host, the forward pass
(the DeepSpeed engine's, loss inside the LM head), the backward pass (DeepSpeed's gradient hooks included) and
the optimizer step (clipping, AdamW on the fp32 master weights, the bf16 copy back); what is left of a step's
wall time (counts, the loss all-reduce, logging) is "rest". The GPU kernels of every step but the first (its
compilation) are recorded with torch.profiler and summed by kind, as train_throughput.py ``--profile`` does
for the plain loop, and laid on one timeline: how long the GPU ran no kernel between the first recorded one and
the last (``gpu_idle_s``; ``gpu_busy`` is the rest's share of that span; the kernels' summed time can differ from
it where kernels overlap). Synchronising and profiling slow the run a little: its figures are shares, not speed.

    python -m torch.distributed.run --nproc_per_node 1 benchmarks/train_profiled.py --config train.yaml --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "trainer")]

from train_throughput import kernel_profiler, kernel_time_table, kernel_times  # noqa: E402

PHASES = ("make_pack", "forward", "backward", "optimizer_step")


def timed(fn, phase: str, totals: dict[str, float], sync):
    """``fn`` with its wall time between synchronisations added to ``totals[phase]``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        sync()
        t0 = time.monotonic()
        out = fn(*args, **kwargs)
        sync()
        totals[phase] += time.monotonic() - t0
        return out

    return wrapper


def gpu_timeline(prof) -> tuple[float, float]:
    """Seconds from the first recorded GPU kernel's start to the last one's end, and of those, seconds in which
    at least one kernel ran (overlapping kernels counted once)."""
    from torch.autograd import DeviceType

    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA)
    if not spans:
        return 0.0, 0.0
    busy, (start, end) = 0.0, spans[0]
    for s, e in spans[1:]:
        if s > end:
            busy += end - start
            start = s
        end = max(end, e)
    busy += end - start
    return (max(e for _, e in spans) - spans[0][0]) / 1e6, busy / 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--json", required=True)
    args = p.parse_args()
    import torch

    from longalign_trainer.train.config import load_config
    from longalign_trainer.train.recipe import Recipe

    recipe = Recipe(load_config(args.config))
    recipe.setup()
    engine, cuda = recipe.engine, recipe.cuda
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    steps: list[dict[str, float]] = []
    current = dict.fromkeys(PHASES, 0.0)
    recipe.make_pack = timed(recipe.make_pack, "make_pack", current, sync)  # type: ignore[method-assign]
    engine.forward = timed(engine.forward, "forward", current, sync)
    engine.backward = timed(engine.backward, "backward", current, sync)
    profiler = kernel_profiler(cuda)
    step = timed(engine.step, "optimizer_step", current, sync)

    def step_and_record(*a, **kw):
        out = step(*a, **kw)
        steps.append(dict(current))
        current.update(dict.fromkeys(PHASES, 0.0))
        if len(steps) == 1:  # the first step compiles: record the steady ones
            profiler.start()
        elif len(steps) == recipe.sampler.total_steps:
            profiler.stop()
        return out

    if recipe.sampler.total_steps < 2:
        raise SystemExit("train_profiled.py: needs at least 2 steps (the first one is not profiled)")
    engine.step = step_and_record
    recipe.train()
    logged = [json.loads(x) for x in recipe.log_path.read_text().splitlines()]
    steady = list(zip(steps[1:], logged[1:], strict=True))
    wall = sum(r["seconds"] for _, r in steady)
    phases = {k: sum(s[k] for s, _ in steady) for k in PHASES}
    phases["rest"] = wall - sum(phases.values())
    table = kernel_time_table(profiler, cuda)
    kernel_s = sum(kernel_times(profiler, cuda)[0].values()) / 1e6
    span_s, busy_s = gpu_timeline(profiler) if cuda else (0.0, 0.0)
    timeline = (
        {"gpu_span_s": round(span_s, 2), "gpu_idle_s": round(span_s - busy_s, 3), "gpu_busy": round(busy_s / span_s, 4)}
        if span_s
        else {}
    )
    result = {
        "steady_steps": len(steady),
        "steady_wall_s": round(wall, 2),
        "tokens": sum(r["tokens"] for _, r in steady),
        "phases_s": {k: round(v, 3) for k, v in phases.items()},
        "gpu_kernel_s": round(kernel_s, 2),
        **timeline,
        "kernels": table,
        "zero_stage": recipe.zero_stage,
        "checkpoint_keeps": recipe.checkpoint_keeps,
        "checkpoint_layers": recipe.checkpoint_layers,
    }
    if recipe.rank == 0:
        Path(args.json).write_text(json.dumps(result))
        print(json.dumps({k: v for k, v in result.items() if k != "kernels"}))
        print(table)
    recipe.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
